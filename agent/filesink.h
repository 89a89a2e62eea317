/* The file sink: every profile as DIR/<service>.<pid>.<kind>.<seq>.pb.gz. */
#ifndef PA_FILESINK_H
#define PA_FILESINK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Creates dir and missing parents (each 0700) like mkdir -p; refuses a
 * world-writable dir without the sticky bit (-EPERM), a non-directory
 * (-ENOTDIR), one we cannot write (-EACCES); logs the reason (warn).
 * The configured path may itself be or pass through a symlink. Returns 0
 * or -errno. */
int pa_filesink_prepare(const char *dir);

/* Writes data to a temporary name (".<final>.tmpXXXXXXXX", 0600,
 * O_NOFOLLOW|O_EXCL) and renames it into place, so readers never see half
 * a file; the temporary file never outlives a failure. service and kind
 * are made safe as one path component. Returns 0 or -errno. */
int pa_filesink_write(const char *dir, const char *service, pid_t pid,
		      const char *kind, uint64_t seq, const uint8_t *data,
		      size_t len);

/* Test seam: the random part of the temporary name. */
extern unsigned (*pa_filesink_tmp_token)(void);

#endif
