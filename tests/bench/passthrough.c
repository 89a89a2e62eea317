/* A bare interposer (forward only) as the floor for interposition cost. */
#include <dlfcn.h>
#include <stddef.h>

static void *(*real_malloc)(size_t);
static void (*real_free)(void *);
static char boot[4096];
static size_t boot_used;

static void resolve(void)
{
	real_malloc = dlsym(RTLD_NEXT, "malloc");
	real_free = dlsym(RTLD_NEXT, "free");
}

void *malloc(size_t n)
{
	if (!real_malloc) {
		/* dlsym may allocate before the real malloc is known */
		if (boot_used + n <= sizeof(boot)) {
			void *p = boot + boot_used;
			boot_used += (n + 15) & ~(size_t)15;
			return p;
		}
		resolve();
	}
	return real_malloc(n);
}

void free(void *p)
{
	if ((char *)p >= boot && (char *)p < boot + sizeof(boot))
		return;
	if (!real_free)
		resolve();
	real_free(p);
}
