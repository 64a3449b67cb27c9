/*
 * bench: per-image latency of patchcore_predict as a C host sees it.
 *
 *   bench [--device cpu|cuda|cuda:N|auto] [--iterations N] [--size S] MODEL...
 *
 * For each model: a synthetic S x S RGB image (default: the model's resize), 5 warm-up calls,
 * then N timed calls (default 100) without the anomaly map and N with it; prints p50, p90,
 * p99, mean and min in milliseconds, one line each. Then the fixed cost of crossing the
 * boundary, from a call that does no work (patchcore_model_info) and from a refused predict
 * (argument checks only). scripts/c-bench.sh runs it on the models `cargo bench --bench ffi`
 * writes; docs/PERFORMANCE.md ("C ABI latency") quotes the output.
 */
#define _POSIX_C_SOURCE 199309L
#include "patchcore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The nearest-rank percentile of sorted values. */
static double percentile(const double *sorted, int n, double p) {
    int rank = (int)(p / 100.0 * n + 0.999999);
    if (rank < 1) {
        rank = 1;
    }
    return sorted[(rank > n ? n : rank) - 1];
}

static void report(const char *what, double *seconds, int n) {
    qsort(seconds, (size_t)n, sizeof *seconds, compare_doubles);
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        sum += seconds[i];
    }
    printf("  %-22s p50 %8.2f ms  p90 %8.2f ms  p99 %8.2f ms  mean %8.2f ms  min %8.2f ms  (n=%d)\n", what,
           1e3 * percentile(seconds, n, 50), 1e3 * percentile(seconds, n, 90), 1e3 * percentile(seconds, n, 99),
           1e3 * sum / n, 1e3 * seconds[0], n);
}

/* A textured RGB test image, deterministic. */
static unsigned char *test_image(unsigned side) {
    unsigned char *pixels = malloc((size_t)side * side * 3);
    if (pixels == NULL) {
        return NULL;
    }
    unsigned state = 12345u;
    for (size_t i = 0; i < (size_t)side * side; i++) {
        state = state * 1103515245u + 12345u;
        unsigned x = (unsigned)(i % side), y = (unsigned)(i / side);
        int v = 110 + (int)((x * 7 + y * 3) % 40) + (int)((state >> 16) % 16);
        pixels[3 * i] = (unsigned char)v;
        pixels[3 * i + 1] = (unsigned char)(v * 9 / 10);
        pixels[3 * i + 2] = (unsigned char)(v * 7 / 10);
    }
    return pixels;
}

static int bench_model(const char *path, const char *device, int iterations, unsigned size) {
    double started = now_seconds();
    PatchcoreModel *model = NULL;
    if (patchcore_load(path, device, &model) != PATCHCORE_OK) {
        fprintf(stderr, "error: %s\n", patchcore_last_error());
        return 1;
    }
    double load_s = now_seconds() - started;
    PatchcoreModelInfo info;
    patchcore_model_info(model, &info);
    unsigned side = size ? size : info.resize;
    printf("%s: %s on %s, input %u px (image %ux%u RGB), bank %u x %u, loaded in %.0f ms\n", path, info.backbone,
           info.device, info.input_size, side, side, info.bank_rows, info.embedding_dim, 1e3 * load_s);

    unsigned char *pixels = test_image(side);
    float *map = malloc((size_t)side * side * sizeof *map);
    double *seconds = malloc((size_t)iterations * sizeof *seconds);
    if (pixels == NULL || map == NULL || seconds == NULL) {
        fprintf(stderr, "error: out of memory\n");
        return 1;
    }
    PatchcoreResult result;
    for (int with_map = 0; with_map < 2; with_map++) {
        float *out = with_map ? map : NULL;
        size_t out_len = with_map ? (size_t)side * side : 0;
        for (int i = -5; i < iterations; i++) {
            double t = now_seconds();
            PatchcoreStatus status =
                patchcore_predict(model, pixels, side, side, (size_t)side * 3, 3, &result, out, out_len);
            t = now_seconds() - t;
            if (status != PATCHCORE_OK) {
                fprintf(stderr, "error: %s\n", patchcore_last_error());
                return 1;
            }
            if (i >= 0) {
                seconds[i] = t;
            }
        }
        report(with_map ? "predict + map" : "predict", seconds, iterations);
    }

    /* The boundary alone: handle lookup, panic guard and the struct write, no model work. */
    enum { CALLS = 200000 };
    double t = now_seconds();
    for (int i = 0; i < CALLS; i++) {
        patchcore_model_info(model, &info);
    }
    double info_ns = (now_seconds() - t) / CALLS * 1e9;
    /* The same plus every argument check of predict, refused at the last one (the map length). */
    t = now_seconds();
    for (int i = 0; i < CALLS; i++) {
        patchcore_predict(model, pixels, side, side, (size_t)side * 3, 3, &result, map, 1);
    }
    double refused_ns = (now_seconds() - t) / CALLS * 1e9;
    printf("  boundary: %.0f ns per call doing no work (patchcore_model_info), %.0f ns per refused predict "
           "(a failure also formats the last-error message)\n",
           info_ns, refused_ns);
    free(seconds);
    free(map);
    free(pixels);
    patchcore_free(model);
    return 0;
}

int main(int argc, char **argv) {
    const char *device = "cpu";
    int iterations = 100;
    unsigned size = 0;
    int i = 1;
    for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        if (strcmp(argv[i], "--device") == 0) {
            device = argv[i + 1];
        } else if (strcmp(argv[i], "--iterations") == 0) {
            iterations = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--size") == 0) {
            size = (unsigned)atoi(argv[i + 1]);
        } else {
            break;
        }
    }
    if (i >= argc || iterations < 1) {
        fprintf(stderr, "usage: %s [--device D] [--iterations N] [--size S] MODEL...\n", argv[0]);
        return 2;
    }
    printf("libpatchcore %s (ABI %u), device %s\n", patchcore_version(), patchcore_abi_version(), device);
    int failed = 0;
    for (; i < argc; i++) {
        failed |= bench_model(argv[i], device, iterations, size);
    }
    return failed;
}
