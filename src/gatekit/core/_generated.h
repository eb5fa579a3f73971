/* The arguments of a gate kernel generated from a gate's NumPy definition (gatekit/core/codegen.py),
 * filled by the one compiled gate that runs such kernels (gatekit/core/_generated.pyx).
 *
 * The generated code sees pointers and sizes only, never the layout of the loop's step structs,
 * so a kernel in the build cache stays valid however those structs change: what array k is
 * (a block's pre-activation, LTM_{t-1}, a parameter, a gradient...) is decided by the generator,
 * which hands the gate the list of slots along with the kernel.
 */
#ifndef GATEKIT_GENERATED_H
#define GATEKIT_GENERATED_H

#include <stddef.h>

#define GK_GENERATED_MAX_ARRAYS 48

typedef struct {
    ptrdiff_t B, H;                               /* rows, and units of every row */
    ptrdiff_t u0, u1;                             /* the units [u0, u1) this call computes */
    void* array[GK_GENERATED_MAX_ARRAYS];         /* the kernel's arrays, in the generator's order */
    ptrdiff_t stride[GK_GENERATED_MAX_ARRAYS];    /* their row strides; 0 for a per-unit parameter */
} gk_generated_args;

typedef void (*gk_generated_kernel)(const gk_generated_args* args);

#endif
