/* The module table finds the executable, libc and the vDSO. */
#include <dlfcn.h>
#include <gnu/libc-version.h>
#include <stdlib.h>
#include <string.h>

#include "modules.h"
#include "unit.h"

static int in_module_named(const struct pa_module *m, const char *part)
{
	return m && strstr(m->path, part) != NULL;
}

TEST(modules_find_exe_and_libc)
{
	struct pa_modules *m;
	CHECK_EQ_INT(pa_modules_new(&m), 0);
	CHECK_EQ_INT(pa_modules_refresh(m, true), 0);
	CHECK(pa_modules_count(m) >= 3);
	const struct pa_module *exe =
	    pa_modules_find(m, (uint64_t)(uintptr_t)&pa_modules_new);
	CHECK(in_module_named(exe, "unit-tests"));
	CHECK(!exe->is_self);
	CHECK(exe->eh_frame_hdr != 0);
	CHECK(exe->build_id_len == 20);
	/* Not strlen: under a sanitizer it is the sanitizer's own. */
	const struct pa_module *libc =
	    pa_modules_find(m, (uint64_t)(uintptr_t)&gnu_get_libc_version);
	CHECK(in_module_named(libc, "libc.so"));
	CHECK(pa_modules_readable(m, libc->eh_frame_hdr, 8));
	CHECK(!pa_modules_readable(m, 16, 8));
	int vdso = 0;
	for (int i = 0; i < pa_modules_count(m); i++)
		vdso |= strcmp(pa_modules_at(m, i)->path, "[vdso]") == 0;
	CHECK(vdso);
	CHECK(pa_modules_find(m, 0) == NULL);
	pa_modules_free(m);
}

TEST(modules_refresh_sees_dlopen_and_dlclose)
{
	struct pa_modules *m;
	CHECK_EQ_INT(pa_modules_new(&m), 0);
	CHECK_EQ_INT(pa_modules_refresh(m, true), 0);
	int before = pa_modules_count(m);
	void *h = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
	CHECK(h);
	pa_modules_changed();
	CHECK_EQ_INT(pa_modules_refresh(m, false), 0);
	void *sym = dlsym(h, "crc32");
	CHECK(in_module_named(pa_modules_find(m, (uint64_t)(uintptr_t)sym),
			      "libz"));
	pa_modules_unload_begin();
	dlclose(h);
	pa_modules_unload_end();
	CHECK_EQ_INT(pa_modules_refresh(m, false), 0);
	(void)before;
	pa_modules_free(m);
}
