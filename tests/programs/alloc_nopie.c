/* A non-PIE executable that takes malloc's address: its dynamic symbol
 * table then holds a canonical PLT entry for malloc (undefined, with a
 * value), which dlsym(RTLD_DEFAULT) returns. Debian's python3 is built so.
 * The agent must not mistake it for a malloc of the program's own.
 * Allocates 64 MiB in 64 KiB blocks, frees them, prints "ok". Built with
 * -no-pie (Makefile: *_nopie programs). */
#include <stdio.h>
#include <stdlib.h>

void *(*volatile take)(size_t);

int main(void)
{
	take = malloc; /* an absolute address in non-PIE code */
	static void *blocks[1024];
	for (int i = 0; i < 1024; i++) {
		blocks[i] = take(64 * 1024);
		if (!blocks[i])
			return 1;
		((volatile char *)blocks[i])[0] = 1;
	}
	for (int i = 0; i < 1024; i++)
		free(blocks[i]);
	puts("ok");
	return 0;
}
