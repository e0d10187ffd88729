/* tune.h - the tune command and its report plot. */
#ifndef MSA_TUNE_H
#define MSA_TUNE_H

/* One shape's candidates for the plot: medians in ms and the pick. */
typedef struct tune_group {
	int ncand, pick;
	double med[16];
} tune_group;

int cmd_tune(int argc, char **argv);
/* Bars of relative speed (fastest = full height, the axis starting at half
 * the fastest), one group per shape, the pick in orange; 0 or -1. */
int tune_plot_png(const char *path, const tune_group *g, int ngroups);

#endif
