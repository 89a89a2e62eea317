/* Per-thread agent state: identity and stack bounds, set outside signal context. */
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "thread.h"

__thread struct pa_thread pa_self __attribute__((tls_model("initial-exec")));

void pa_thread_init_current(void)
{
	pa_self.tid = (uint32_t)syscall(SYS_gettid);
	pthread_attr_t attr;
	void *addr;
	size_t size;
	/* pthread_getattr_np allocates and, on the main thread, reads
	 * /proc/self/maps: never from a signal handler. */
	if (pthread_getattr_np(pthread_self(), &attr) == 0) {
		if (pthread_attr_getstack(&attr, &addr, &size) == 0) {
			pa_self.stack_lo = (uint64_t)(uintptr_t)addr;
			pa_self.stack_hi = pa_self.stack_lo + size;
		}
		pthread_attr_destroy(&attr);
	}
	pa_self.inited = 1;
}
