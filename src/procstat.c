/* procstat: /proc/self/stat, /proc/stat, /proc/self/fd.  See procstat.h. */
#include "capgate/procstat.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

int procstat_parse_stat(const char *line, long ticks, long page, double boot_time,
                        struct procstat *out)
{
    /* "pid (comm) state ppid ...": comm may hold ") ", so the fields start
     * after the last ')'. */
    const char *p = strrchr(line, ')');
    if (!p || ticks <= 0 || page <= 0)
        return -1;
    p++;
    unsigned long long utime, stime, start, vsize;
    long long rss;
    /* Fields 3 (state) to 24 (rss), as proc(5) numbers them. */
    int n = sscanf(p, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d "
                      "%*d %*d %llu %llu %lld", &utime, &stime, &start, &vsize, &rss);
    if (n != 5)
        return -1;
    out->cpu_seconds = (double)(utime + stime) / (double)ticks;
    out->virtual_bytes = vsize;
    out->resident_bytes = rss > 0 ? (uint64_t)rss * (uint64_t)page : 0;
    out->start_time = boot_time + (double)start / (double)ticks;
    return 0;
}

static double boot_time(void)
{
    FILE *f = fopen("/proc/stat", "re");
    char line[256];
    double bt = 0;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "btime ", 6) == 0) {
            bt = strtod(line + 6, NULL);
            break;
        }
    if (f)
        fclose(f);
    return bt;
}

static uint64_t count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    uint64_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n ? n - 1 : 0;   /* not the descriptor opendir itself holds */
}

int procstat_read(struct procstat *out)
{
    memset(out, 0, sizeof *out);
    char line[1024];
    FILE *f = fopen("/proc/self/stat", "re");
    bool got = f && fgets(line, sizeof line, f);
    if (f)
        fclose(f);
    if (!got || procstat_parse_stat(line, sysconf(_SC_CLK_TCK), sysconf(_SC_PAGESIZE),
                                    boot_time(), out) != 0)
        return -1;
    out->open_fds = count_fds();
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        out->max_fds = (uint64_t)rl.rlim_cur;
    out->ok = true;
    return 0;
}
