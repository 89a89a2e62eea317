/* The libc front: the only file defining libc names. Each wrapper forwards
 * to the next definition (RTLD_NEXT) and tells the agent what happened. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "agent.h"
#include "modules.h"
#include "thread.h"

#define EXPORT __attribute__((visibility("default")))

/* ---- threads ------------------------------------------------------------ */

typedef int (*pthread_create_fn)(pthread_t *, const pthread_attr_t *,
				 void *(*)(void *), void *);
static pthread_create_fn real_pthread_create;

EXPORT int pthread_create(pthread_t *thread, const pthread_attr_t *attr,
			  void *(*start)(void *), void *arg)
{
	if (!real_pthread_create) {
		real_pthread_create = (pthread_create_fn)dlsym(RTLD_NEXT, "pthread_create");
		if (!real_pthread_create)
			return EAGAIN;
	}
	return pa_lifecycle_pthread_create(real_pthread_create, thread, attr, start, arg);
}

/* ---- the loader: the module table goes stale; dlclose must not unmap
 * code the agent thread is reading ------------------------------------- */

typedef void *(*dlopen_fn)(const char *, int);
typedef int (*dlclose_fn)(void *);
static dlopen_fn real_dlopen;
static dlclose_fn real_dlclose;

EXPORT void *dlopen(const char *file, int flags)
{
	if (!real_dlopen)
		real_dlopen = (dlopen_fn)dlsym(RTLD_NEXT, "dlopen");
	if (!real_dlopen)
		return NULL;
	void *h = real_dlopen(file, flags);
	int saved = errno;
	pa_modules_changed();
	errno = saved;
	return h;
}

EXPORT int dlclose(void *handle)
{
	if (!real_dlclose)
		real_dlclose = (dlclose_fn)dlsym(RTLD_NEXT, "dlclose");
	if (!real_dlclose)
		return -1;
	pa_modules_unload_begin();
	int rc = real_dlclose(handle);
	int saved = errno;
	pa_modules_unload_end();
	errno = saved;
	return rc;
}

/* ---- the allocation surface (memory profiling) ----------------------------- */
