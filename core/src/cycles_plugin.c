/*
 * Lepton's QEMU TCG plugin for cycle estimates (`cargo xtask bench`): exact per-address execution
 * counts inside marked intervals, split by engine step, with the two things an execution count
 * alone cannot tell: how often each block-ending instruction jumped (its successor was not the
 * next address) and how often each block was entered by a jump rather than by falling through.
 *
 * Plugin API version 1 (QEMU 5.2 .. 8.x; Debian's QEMU 7.2). The few declarations used are
 * restated below instead of including qemu-plugin.h, which Debian does not ship.
 *
 * Arguments: lo=, hi= (code range, half-open), begin=, end= (the inference markers), step_begin=,
 * step_end= (the step markers), out=PATH. Markers are function entries: QEMU always starts a
 * translation block there, so every marker is seen by the block callback.
 *
 * Buckets: 0 holds what runs outside any step (the engine's loop, the markers' callers), bucket k
 * the instructions of step k-1 (the k-th step_begin since begin). Output lines:
 *   R <intervals>
 *   C <bucket> <addr-hex> <executions> <jumps-out> <jumps-in>
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct {
    const char *target_name;
    struct { int min; int cur; } version;
    bool system_emulation;
    union { struct { int smp_vcpus; int max_vcpus; } system; };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
__attribute__((visibility("default"))) int qemu_plugin_version = 1;

enum marker { NONE, BEGIN, END, STEP_BEGIN, STEP_END };
enum { BUCKETS = 1025, EXEC = 0, JUMP_OUT = 1, JUMP_IN = 2, FIELDS = 3 };

struct block {
    uint64_t start, last, next; /* first and last instruction, fall-through address */
    enum marker marker;
    size_t n;                   /* instructions in range */
    uint32_t slot[];            /* their halfword indices from lo */
};

static uint64_t lo, hi, marker_addr[5];
static size_t slots;
static uint64_t *counts[BUCKETS];
static FILE *out;
static bool inside;
static unsigned bucket, steps, intervals, overflow;
static const struct block *prev;
static unsigned prev_bucket;

static uint64_t *field(unsigned b, uint64_t addr, int f)
{
    if (addr < lo || addr >= hi) {
        return NULL;
    }
    if (!counts[b]) {
        counts[b] = calloc(slots * FIELDS, sizeof(uint64_t));
        if (!counts[b]) {
            fprintf(stderr, "cycle plugin: out of memory\n");
            exit(1);
        }
    }
    return &counts[b][((addr - lo) >> 1) * FIELDS + f];
}

static void bump(unsigned b, uint64_t addr, int f)
{
    uint64_t *c = field(b, addr, f);
    if (c) {
        (*c)++;
    }
}

static void on_block(unsigned int vcpu, void *ud)
{
    (void)vcpu;
    const struct block *blk = ud;
    if (inside && prev && prev->next != blk->start) {
        bump(prev_bucket, prev->last, JUMP_OUT);
        bump(bucket, blk->start, JUMP_IN);
    }
    switch (blk->marker) {
    case BEGIN:
        if (inside) {
            fprintf(stderr, "cycle plugin: begin marker inside an open interval\n");
        }
        inside = true;
        bucket = 0;
        steps = 0;
        break;
    case END:
        if (inside) {
            intervals++;
        }
        inside = false;
        break;
    case STEP_BEGIN:
        steps++;
        if (steps < BUCKETS) {
            bucket = steps;
        } else {
            overflow++;
            bucket = 0;
        }
        break;
    case STEP_END:
        bucket = 0;
        break;
    case NONE:
        break;
    }
    if (!inside) {
        prev = NULL;
        return;
    }
    uint64_t *base = counts[bucket];
    if (!base) {
        field(bucket, lo, EXEC);
        base = counts[bucket];
    }
    for (size_t i = 0; i < blk->n; i++) {
        base[(size_t)blk->slot[i] * FIELDS + EXEC]++;
    }
    prev = blk;
    prev_bucket = bucket;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    if (n == 0) {
        return;
    }
    struct block *blk = calloc(1, sizeof(struct block) + n * sizeof(uint32_t));
    if (!blk) {
        fprintf(stderr, "cycle plugin: out of memory\n");
        exit(1);
    }
    blk->start = qemu_plugin_tb_vaddr(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t va = qemu_plugin_insn_vaddr(insn);
        if (i == n - 1) {
            blk->last = va;
            blk->next = va + qemu_plugin_insn_size(insn);
        }
        if (va >= lo && va < hi) {
            blk->slot[blk->n++] = (uint32_t)((va - lo) >> 1);
        }
    }
    for (int m = BEGIN; m <= STEP_END; m++) {
        if (blk->start == marker_addr[m]) {
            blk->marker = (enum marker)m;
        }
    }
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, QEMU_PLUGIN_CB_NO_REGS, blk);
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    (void)id;
    (void)p;
    fprintf(out, "R %u\n", intervals);
    if (overflow) {
        fprintf(out, "O %u\n", overflow);
    }
    for (unsigned b = 0; b < BUCKETS; b++) {
        if (!counts[b]) {
            continue;
        }
        for (size_t s = 0; s < slots; s++) {
            const uint64_t *c = &counts[b][s * FIELDS];
            if (c[EXEC] || c[JUMP_OUT] || c[JUMP_IN]) {
                fprintf(out, "C %u %" PRIx64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", b, lo + 2 * s, c[EXEC],
                        c[JUMP_OUT], c[JUMP_IN]);
            }
        }
    }
    fclose(out);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                               int argc, char **argv)
{
    (void)info;
    static const char *names[5] = {"", "begin=", "end=", "step_begin=", "step_end="};
    const char *path = NULL;
    for (int m = 0; m < 5; m++) {
        marker_addr[m] = UINT64_MAX;
    }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool known = false;
        if (!strncmp(a, "lo=", 3)) {
            lo = strtoull(a + 3, NULL, 0), known = true;
        } else if (!strncmp(a, "hi=", 3)) {
            hi = strtoull(a + 3, NULL, 0), known = true;
        } else if (!strncmp(a, "out=", 4)) {
            path = a + 4, known = true;
        }
        for (int m = BEGIN; m <= STEP_END && !known; m++) {
            size_t len = strlen(names[m]);
            if (!strncmp(a, names[m], len)) {
                marker_addr[m] = strtoull(a + len, NULL, 0), known = true;
            }
        }
        if (!known) {
            fprintf(stderr, "cycle plugin: unknown argument '%s'\n", a);
            return -1;
        }
    }
    if (!path || hi <= lo) {
        fprintf(stderr, "cycle plugin: needs out=PATH and a code range lo= < hi=\n");
        return -1;
    }
    out = fopen(path, "w");
    if (!out) {
        perror(path);
        return -1;
    }
    slots = (size_t)((hi - lo + 1) >> 1);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
