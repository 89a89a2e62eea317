/* The libc front: the only file defining libc names. Each wrapper forwards
 * to the next definition (RTLD_NEXT) and tells the agent what happened. */
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "agent.h"
#include "heap.h"
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

/* Every entry point of the allocator and of anonymous mappings, so nothing
 * is missed or counted twice; C++ new/delete reach malloc/free. Each one
 * forwards to heap.c's core (fast paths inlined from heap.h), which calls
 * the next definition and returns exactly what it returned. */

/* C23 names glibc 2.36 does not declare yet. */
void free_sized(void *p, size_t size);
void free_aligned_sized(void *p, size_t align, size_t size);

EXPORT void *malloc(size_t size)
{
	return pa_heap_malloc(size);
}

EXPORT void free(void *p)
{
	pa_heap_free(p);
}

EXPORT void *calloc(size_t n, size_t size)
{
	return pa_heap_calloc(n, size);
}

EXPORT void *realloc(void *p, size_t size)
{
	return pa_heap_realloc(p, size);
}

EXPORT void *reallocarray(void *p, size_t n, size_t size)
{
	return pa_heap_reallocarray(p, n, size);
}

EXPORT int posix_memalign(void **out, size_t align, size_t size)
{
	return pa_heap_posix_memalign(out, align, size);
}

EXPORT void *aligned_alloc(size_t align, size_t size)
{
	return pa_heap_aligned_alloc(align, size);
}

EXPORT void *memalign(size_t align, size_t size)
{
	return pa_heap_memalign(align, size);
}

EXPORT void *valloc(size_t size)
{
	return pa_heap_valloc(size);
}

EXPORT void *pvalloc(size_t size)
{
	return pa_heap_pvalloc(size);
}

EXPORT void free_sized(void *p, size_t size)
{
	pa_heap_free_sized(p, size);
}

EXPORT void free_aligned_sized(void *p, size_t align, size_t size)
{
	pa_heap_free_aligned_sized(p, align, size);
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd,
		  off_t off)
{
	return pa_heap_mmap(addr, len, prot, flags, fd, off,
			    __builtin_return_address(0), false);
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd,
		    off_t off)
{
	return pa_heap_mmap(addr, len, prot, flags, fd, off,
			    __builtin_return_address(0), true);
}

EXPORT int munmap(void *addr, size_t len)
{
	return pa_heap_munmap(addr, len, __builtin_return_address(0));
}

EXPORT void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	void *new_addr = NULL;
	if (flags & MREMAP_FIXED) {
		va_list ap;
		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	return pa_heap_mremap(old, old_len, new_len, flags, new_addr,
			      __builtin_return_address(0));
}
