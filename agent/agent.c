/* Lifecycle: load-time constructor, fork handlers, exit flush. */
#include "log.h"

__attribute__((constructor)) static void pa_agent_load(void)
{
	pa_debug("loaded");
}
