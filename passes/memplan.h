/* A static memory plan for a graph whose symbols have concrete sizes: the
 * model fast path runs a training step out of one arena allocated once, and
 * this decides where each value lives in it.
 *
 *   schedule   the nodes that feed an output, in id order (a topological
 *              order: a graph's sources always have smaller ids)
 *   sizes      elements x dtype bytes, symbols bound by name (B = 16, ...)
 *   liveness   a value is live from the step that makes it to its last
 *              reader's step, both included (an op never writes over its
 *              own operands); a graph output lives to the end
 *   offsets    one per arena value, 64-byte aligned; two values live at
 *              the same step never overlap
 *
 * Who owns what: an INPUT (a parameter, the batch) is the caller's memory
 * and lives throughout (EXTERNAL); a CONST is an immediate and takes none;
 * RESHAPE, EXPAND (a stride-0 broadcast) and STOPGRAD are views: they take
 * no memory of their own and keep their base value alive as long as they are
 * read. Everything else gets arena bytes.
 *
 * Placement is TFLite's greedy-by-size (also XLA's heap simulator's
 * default): values sorted by size, largest first, each put in the smallest
 * gap between the already placed values it shares a step with, or above
 * them all. The arena is never smaller than the peak live bytes (the most
 * bytes live at one step), which the plan reports as the lower bound. */
#ifndef KD_MEMPLAN_H
#define KD_MEMPLAN_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "../ir/ir.h"

#define KD_MEMPLAN_ALIGN 64 /* a cache line; also AVX-512's widest load */

typedef struct kd_sym_binding {
  const char *name; /* "B" */
  int64_t size;     /* >= 0 */
} kd_sym_binding;

typedef enum kd_mem_kind {
  KD_MEM_NONE,     /* not scheduled (feeds no output), or a CONST */
  KD_MEM_EXTERNAL, /* an INPUT: the caller's memory, live throughout */
  KD_MEM_VIEW,     /* the memory of `base` */
  KD_MEM_ARENA,    /* its own bytes at `offset` */
} kd_mem_kind;

typedef struct kd_mem_value {
  kd_mem_kind kind;
  int64_t bytes;       /* elements x dtype size, whatever the kind */
  int32_t first, last; /* schedule positions it is made and last read at; an
                          output's last is norder (after the last step) */
  kd_node_id base;     /* the value owning the memory: the node itself, or
                          for a view the first non-view below it */
  int64_t offset;      /* ARENA: bytes from the arena's start; else -1 */
} kd_mem_value;

typedef struct kd_memplan {
  size_t nnodes;
  kd_node_id *order;      /* [norder]: the schedule */
  size_t norder;
  kd_mem_value *values;   /* [nnodes], by node id */
  int64_t arena_bytes;    /* the arena's size */
  int64_t value_bytes;    /* the arena values' sizes summed (aligned): memory without reuse */
  int64_t peak_bytes;     /* the most aligned bytes live at one step: arena_bytes >= this */
  int64_t external_bytes; /* the scheduled inputs' (and external outputs') sizes summed */
} kd_memplan;

/* Plans g with every symbol bound (bind[i].name to bind[i].size).
 * KD_ERR_INVALID names an unbound symbol or a size that overflows;
 * KD_ERR_NOMEM. *out is then empty (safe to free). */
kd_status kd_memplan_build(const kd_graph *g, const kd_sym_binding *bind, size_t nbind,
                           kd_memplan *out, char *err, size_t errlen);
void kd_memplan_free(kd_memplan *p);

/* The caller's schedule and memory kinds, for a planner of executed steps
 * (codegen/stepgen.c). order lists the nodes to plan, each once, every
 * node's sources before it (NULL: the default schedule above); liveness
 * follows it. view[id] set plans node id as a view of its first source,
 * whatever its op (NULL: RESHAPE, EXPAND and STOPGRAD, as above; given, it
 * replaces that rule, so a RESHAPE the caller copies is not a view).
 * external[id] set puts a non-view node in the caller's memory (an output
 * written in place); INPUTs are always external. */
typedef struct kd_memplan_opts {
  const kd_node_id *order;
  size_t norder;
  const bool *view;     /* [kd_graph_size(g)] or NULL */
  const bool *external; /* [kd_graph_size(g)] or NULL */
} kd_memplan_opts;
kd_status kd_memplan_build_opts(const kd_graph *g, const kd_sym_binding *bind, size_t nbind,
                                const kd_memplan_opts *opts, kd_memplan *out, char *err,
                                size_t errlen);

/* A summary line, then one line per scheduled node (what `kdc emit-ir
 * --after memplan` will print):
 *   memplan: 9 steps, arena 2048 bytes, values 4096 bytes (2.00x), peak live
 *            2048 bytes, external 512 bytes                  (one line)
 *     [0] %0 input "x": external 512
 *     [1] %1 const: none
 *     [3] %3 matmul: arena 0 + 1024, live 3..5
 *     [4] %4 reshape: view of %3 */
void kd_memplan_print(const kd_graph *g, const kd_memplan *p, FILE *out);

#endif /* KD_MEMPLAN_H */
