/* The agent thread: drains samples, unwinds, aggregates, and every
 * interval builds the profiles and hands them to the sinks. */
#ifndef PA_EXPORT_H
#define PA_EXPORT_H

#include <stdint.h>

/* Starts the agent thread (it marks itself, so it is never sampled). */
int pa_export_start(void);
/* Final interval: flush and deliver within the deadline, then stop the
 * thread. Safe to call twice. */
void pa_export_stop(int64_t deadline_ns);
/* Child after fork: the thread is gone; start a fresh one lazily. */
void pa_export_atfork_child(void);

#endif
