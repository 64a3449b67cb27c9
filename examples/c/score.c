/*
 * score: scores images with a patchcore model through the C ABI, one JSON line per image.
 *
 *   score [--device cpu|cuda|cuda:N|auto] MODEL IMAGE_OR_FOLDER...
 *
 * Folders are scanned for .png/.jpg/.jpeg files, sorted by name, as `patchcore predict` does,
 * and each line carries the same fields as that command's (path, score, normalized, label)
 * plus two read from the anomaly map: its peak and the fraction of the image above the pixel
 * threshold. An image that cannot be read gets a line with an "error" field, the others are
 * still scored, and the exit status is 1.
 *
 * Images are decoded by the library (patchcore_image_load) and scored from that pixel buffer
 * with patchcore_predict, the same call a host with its own camera buffers would make.
 */
#define _POSIX_C_SOURCE 200809L /* strdup, opendir, stat */
#include "patchcore.h"

#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Writes `text` as a JSON string. */
static void print_json_string(const char *text) {
    putchar('"');
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c == '"' || *c == '\\') {
            printf("\\%c", *c);
        } else if (*c < 0x20) {
            printf("\\u%04x", *c);
        } else {
            putchar(*c);
        }
    }
    putchar('"');
}

static void print_error(const char *path, const char *message) {
    printf("{\"path\": ");
    print_json_string(path);
    printf(", \"error\": ");
    print_json_string(message);
    printf("}\n");
}

/* Scores one file; returns 0 on success, 1 when the image could not be scored. */
static int score_file(const PatchcoreModel *model, const char *path) {
    PatchcoreImage image;
    if (patchcore_image_load(path, &image) != PATCHCORE_OK) {
        print_error(path, patchcore_last_error());
        return 1;
    }
    size_t pixels = (size_t)image.width * image.height;
    float *map = malloc(pixels * sizeof *map);
    if (map == NULL) {
        print_error(path, "out of memory for the anomaly map");
        patchcore_image_free(&image);
        return 1;
    }
    PatchcoreResult result;
    PatchcoreStatus status = patchcore_predict(model, image.pixels, image.width, image.height, image.stride_bytes,
                                               image.channels, &result, map, pixels);
    patchcore_image_free(&image);
    if (status != PATCHCORE_OK) {
        print_error(path, patchcore_last_error());
        free(map);
        return 1;
    }
    /* The map is normalised like the score: 0.5 is the pixel threshold. */
    float peak = 0.0f;
    size_t above = 0;
    for (size_t i = 0; i < pixels; i++) {
        peak = map[i] > peak ? map[i] : peak;
        above += map[i] > 0.5f;
    }
    free(map);
    printf("{\"path\": ");
    print_json_string(path);
    /* %.9g prints every float exactly enough to read back the same value. */
    printf(", \"score\": %.9g, \"normalized\": %.9g, \"label\": \"%s\", \"map_peak\": %.4f, \"map_area\": %.4f}\n",
           result.score, result.normalized, result.is_anomalous ? "anomalous" : "normal", peak,
           (double)above / (double)pixels);
    return 0;
}

static int has_image_extension(const char *name) {
    const char *dot = strrchr(name, '.');
    if (dot == NULL) {
        return 0;
    }
    char ext[8] = {0};
    for (size_t i = 0; i + 1 < sizeof ext && dot[i + 1]; i++) {
        ext[i] = (char)tolower((unsigned char)dot[i + 1]);
    }
    return strcmp(ext, "png") == 0 || strcmp(ext, "jpg") == 0 || strcmp(ext, "jpeg") == 0;
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Scores every image of a folder in name order; returns the number of failures. */
static int score_folder(const PatchcoreModel *model, const char *folder) {
    DIR *dir = opendir(folder);
    if (dir == NULL) {
        print_error(folder, "cannot open this folder");
        return 1;
    }
    char **names = NULL;
    size_t count = 0, capacity = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (!has_image_extension(entry->d_name)) {
            continue;
        }
        if (count == capacity) {
            capacity = capacity ? 2 * capacity : 64;
            char **grown = realloc(names, capacity * sizeof *names);
            if (grown == NULL) {
                break;
            }
            names = grown;
        }
        char *name = strdup(entry->d_name);
        if (name == NULL) {
            break;
        }
        names[count++] = name;
    }
    closedir(dir);
    if (count == 0) {
        /* As `patchcore predict`: a folder to score without images is an error, not nothing. */
        print_error(folder, "no PNG or JPEG images in this folder (subfolders are not searched: name them)");
        free(names);
        return 1;
    }
    qsort(names, count, sizeof *names, compare_names);
    int failures = 0;
    for (size_t i = 0; i < count; i++) {
        size_t length = strlen(folder) + strlen(names[i]) + 2;
        char *path = malloc(length);
        if (path == NULL) {
            print_error(names[i], "out of memory");
            failures++;
        } else {
            snprintf(path, length, "%s/%s", folder, names[i]);
            failures += score_file(model, path);
        }
        free(path);
        free(names[i]);
    }
    free(names);
    return failures;
}

int main(int argc, char **argv) {
    const char *device = "cpu";
    int first = 1;
    if (argc > 2 && strcmp(argv[1], "--device") == 0) {
        device = argv[2];
        first = 3;
    }
    if (argc - first < 2) {
        fprintf(stderr, "usage: %s [--device cpu|cuda|cuda:N|auto] MODEL IMAGE_OR_FOLDER...\n", argv[0]);
        return 2;
    }
    if (patchcore_abi_version() != PATCHCORE_ABI_VERSION) {
        fprintf(stderr, "error: libpatchcore %s has ABI %u, this program was built for ABI %u\n", patchcore_version(),
                patchcore_abi_version(), PATCHCORE_ABI_VERSION);
        return 1;
    }
    PatchcoreModel *model = NULL;
    if (patchcore_load(argv[first], device, &model) != PATCHCORE_OK) {
        fprintf(stderr, "error: %s\n", patchcore_last_error());
        return 1;
    }
    int failures = 0;
    for (int i = first + 1; i < argc; i++) {
        struct stat info;
        if (stat(argv[i], &info) == 0 && S_ISDIR(info.st_mode)) {
            failures += score_folder(model, argv[i]);
        } else {
            failures += score_file(model, argv[i]);
        }
    }
    patchcore_free(model);
    return failures > 0 ? 1 : 0;
}
