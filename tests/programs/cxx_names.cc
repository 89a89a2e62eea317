// A C++ host: namespaces, classes, templates; profiles must show them demangled.
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <vector>

namespace meter {

template <typename T> class Accumulator {
      public:
	__attribute__((noinline)) T add_all(const std::vector<T> &v)
	{
		T total = 0;
		for (int r = 0; r < 50; r++)
			for (const T &x : v)
				total += x * (r + 1);
		return total;
	}
};

class Reader {
      public:
	__attribute__((noinline)) long parse_readings(int n)
	{
		std::vector<long> v(static_cast<size_t>(n));
		for (int i = 0; i < n; i++)
			v[static_cast<size_t>(i)] = i % 9973;
		Accumulator<long> acc;
		return acc.add_all(v);
	}
};

} // namespace meter

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 1.0;
	meter::Reader reader;
	long total = 0;
	clock_t end = clock() + static_cast<clock_t>(seconds * CLOCKS_PER_SEC);
	while (clock() < end)
		total += reader.parse_readings(100000);
	std::printf("%ld\n", total != 0 ? 1L : 0L);
	return 0;
}
