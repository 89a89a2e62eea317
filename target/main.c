/* The smart meter aggregator (placeholder until target/ lands). */
int main(void)
{
	return 0;
}
