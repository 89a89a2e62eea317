/* The file sink: every profile as DIR/<service>.<pid>.<kind>.<seq>.pb.gz. */
#ifndef PA_FILESINK_H
#define PA_FILESINK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Creates dir (0700) if missing; refuses a world-writable dir without the
 * sticky bit. Returns 0 or -errno. */
int pa_filesink_prepare(const char *dir);

/* Writes data to a temporary name (0600, O_NOFOLLOW|O_EXCL) and renames
 * it into place, so readers never see half a file. Returns 0 or -errno. */
int pa_filesink_write(const char *dir, const char *service, pid_t pid,
		      const char *kind, uint64_t seq, const uint8_t *data,
		      size_t len);

#endif
