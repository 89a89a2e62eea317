// C++ new/delete reach the agent through malloc/free: objects, arrays and
// a container at known sites. Prints the truth as JSON (see alloc_sites.c).
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <vector>

namespace meter {

struct Reading {
	long id;
	double kwh;
	long at;
	char note[40]; // 64 bytes in all
};

// 1M readings of 64 B, every other one deleted. Paced (about 8,000
// samples a second at 16 KiB) so the agent's sample buffer never fills.
__attribute__((noinline)) void load_objects(std::vector<Reading *> &v, long n)
{
	for (long i = 0; i < n; i++) {
		Reading *r = new Reading();
		r->id = i;
		v.push_back(r);
		if (i % 2048 == 2047) {
			struct timespec ts = {0, 1000000};
			nanosleep(&ts, nullptr);
		}
	}
	for (long i = 0; i < n; i += 2) {
		delete v[i];
		v[i] = nullptr;
	}
}

// 64 arrays of 1 MiB, 32 kept.
__attribute__((noinline)) void make_buffers(std::vector<char *> &keep)
{
	for (int i = 0; i < 64; i++) {
		char *b = new char[1 << 20];
		b[0] = 1;
		if (i % 2)
			delete[] b;
		else
			keep.push_back(b);
	}
}

} // namespace meter

int main()
{
	const long n = 1 << 20;
	std::vector<meter::Reading *> v;
	v.reserve(n);
	std::vector<char *> keep;
	keep.reserve(64);
	meter::load_objects(v, n);
	meter::make_buffers(keep);
	std::printf("{\"meter::load_objects\": {\"alloc_objects\": %ld, \"alloc_space\": %ld, "
		    "\"inuse_objects\": %ld, \"inuse_space\": %ld}, "
		    "\"meter::make_buffers\": {\"alloc_objects\": 64, \"alloc_space\": %ld, "
		    "\"inuse_objects\": 32, \"inuse_space\": %ld}}\n",
		    n, n * 64, n / 2, n / 2 * 64, 64L << 20, 32L << 20);
	std::fflush(stdout);
	return 0;
}
