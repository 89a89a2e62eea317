/* The runner itself runs. */
#include "unit.h"

TEST(runner_runs)
{
	CHECK(1 + 1 == 2);
}
