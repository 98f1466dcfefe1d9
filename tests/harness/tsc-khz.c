/* Prints this machine's TSC frequency in kHz. The test host needs it on its command
 * line (tsc_early_khz=): under TCG the guest TSC ticks at the host's rate, and on
 * -M microvm (no HPET, no PM timer) the kernel's own calibration fails whenever the
 * host is loaded, leaving the boot spinning in calibrate_delay(). Takes the median of
 * five 100 ms samples so that one descheduled sample does not skew it. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <x86intrin.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC_RAW, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(void)
{
	double khz[5];
	struct timespec pause = { 0, 100000000 };
	for (int i = 0; i < 5; i++) {
		double t0 = now();
		unsigned long long c0 = __rdtsc();
		nanosleep(&pause, NULL);
		unsigned long long c1 = __rdtsc();
		double t1 = now();
		khz[i] = (double)(c1 - c0) / (t1 - t0) / 1000.0;
	}
	qsort(khz, 5, sizeof khz[0], cmp);
	printf("%.0f\n", khz[2]);
	return 0;
}
