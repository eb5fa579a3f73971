# The gates' step as the compiled loops fill it, untyped.
#
# StepFloat and StepDouble (gatekit/core/_gate.pxd) differ only in the type their data pointers
# point to. Each loop is written once over `floating`, so it fills this twin of theirs and hands
# the gates a pointer to it as the struct of their own precision: the three must agree field
# by field, which step_layout() checks where each loop is imported.

from gatekit.core._gate cimport Extent, StepFloat, StepDouble

cdef struct StepAny:
    Extent e
    void* z
    const void* s_t
    const void* STM_prev
    const void* LTM_prev
    const void* E_t
    void* f_t
    void* i_t
    void* N_t
    void* LTM_t
    void* U_t
    void* V_t
    void* STM_t
    void* work
    void* dz
    void* ds_t
    const void* dSTM_t
    void* df_t
    void* di_t
    void* dN_t
    void* dU_t
    void* dV_t
    void* dLTM_t
    void* dLTM_prev
    void* dSTM_prev
    void* dE_t
    void** dparam
    void* barrier
    int error
    const void* mem_prev
    void* mem_t
    void* dmem_t
    void* dmem_prev
    const void* product
    void* post_product


cdef inline list step_layout(str module):
    """Every field's offset in StepAny, StepFloat and StepDouble, with the structs' sizes last:
    [(name, offset_any, offset_float, offset_double), ...]. Raises ImportError naming
    ``module`` and the first field where they disagree (Cython has no offsetof: an offset is
    a field's address less its struct's)."""
    cdef StepAny a
    cdef StepFloat f
    cdef StepDouble d
    cdef char* A = <char*> &a
    cdef char* F = <char*> &f
    cdef char* D = <char*> &d
    cdef list fields = [
        ("e", <char*> &a.e - A, <char*> &f.e - F, <char*> &d.e - D),
        ("z", <char*> &a.z - A, <char*> &f.z - F, <char*> &d.z - D),
        ("s_t", <char*> &a.s_t - A, <char*> &f.s_t - F, <char*> &d.s_t - D),
        ("STM_prev", <char*> &a.STM_prev - A, <char*> &f.STM_prev - F, <char*> &d.STM_prev - D),
        ("LTM_prev", <char*> &a.LTM_prev - A, <char*> &f.LTM_prev - F, <char*> &d.LTM_prev - D),
        ("E_t", <char*> &a.E_t - A, <char*> &f.E_t - F, <char*> &d.E_t - D),
        ("f_t", <char*> &a.f_t - A, <char*> &f.f_t - F, <char*> &d.f_t - D),
        ("i_t", <char*> &a.i_t - A, <char*> &f.i_t - F, <char*> &d.i_t - D),
        ("N_t", <char*> &a.N_t - A, <char*> &f.N_t - F, <char*> &d.N_t - D),
        ("LTM_t", <char*> &a.LTM_t - A, <char*> &f.LTM_t - F, <char*> &d.LTM_t - D),
        ("U_t", <char*> &a.U_t - A, <char*> &f.U_t - F, <char*> &d.U_t - D),
        ("V_t", <char*> &a.V_t - A, <char*> &f.V_t - F, <char*> &d.V_t - D),
        ("STM_t", <char*> &a.STM_t - A, <char*> &f.STM_t - F, <char*> &d.STM_t - D),
        ("work", <char*> &a.work - A, <char*> &f.work - F, <char*> &d.work - D),
        ("dz", <char*> &a.dz - A, <char*> &f.dz - F, <char*> &d.dz - D),
        ("ds_t", <char*> &a.ds_t - A, <char*> &f.ds_t - F, <char*> &d.ds_t - D),
        ("dSTM_t", <char*> &a.dSTM_t - A, <char*> &f.dSTM_t - F, <char*> &d.dSTM_t - D),
        ("df_t", <char*> &a.df_t - A, <char*> &f.df_t - F, <char*> &d.df_t - D),
        ("di_t", <char*> &a.di_t - A, <char*> &f.di_t - F, <char*> &d.di_t - D),
        ("dN_t", <char*> &a.dN_t - A, <char*> &f.dN_t - F, <char*> &d.dN_t - D),
        ("dU_t", <char*> &a.dU_t - A, <char*> &f.dU_t - F, <char*> &d.dU_t - D),
        ("dV_t", <char*> &a.dV_t - A, <char*> &f.dV_t - F, <char*> &d.dV_t - D),
        ("dLTM_t", <char*> &a.dLTM_t - A, <char*> &f.dLTM_t - F, <char*> &d.dLTM_t - D),
        ("dLTM_prev", <char*> &a.dLTM_prev - A, <char*> &f.dLTM_prev - F,
         <char*> &d.dLTM_prev - D),
        ("dSTM_prev", <char*> &a.dSTM_prev - A, <char*> &f.dSTM_prev - F,
         <char*> &d.dSTM_prev - D),
        ("dE_t", <char*> &a.dE_t - A, <char*> &f.dE_t - F, <char*> &d.dE_t - D),
        ("dparam", <char*> &a.dparam - A, <char*> &f.dparam - F, <char*> &d.dparam - D),
        ("barrier", <char*> &a.barrier - A, <char*> &f.barrier - F, <char*> &d.barrier - D),
        ("error", <char*> &a.error - A, <char*> &f.error - F, <char*> &d.error - D),
        ("mem_prev", <char*> &a.mem_prev - A, <char*> &f.mem_prev - F, <char*> &d.mem_prev - D),
        ("mem_t", <char*> &a.mem_t - A, <char*> &f.mem_t - F, <char*> &d.mem_t - D),
        ("dmem_t", <char*> &a.dmem_t - A, <char*> &f.dmem_t - F, <char*> &d.dmem_t - D),
        ("dmem_prev", <char*> &a.dmem_prev - A, <char*> &f.dmem_prev - F,
         <char*> &d.dmem_prev - D),
        ("product", <char*> &a.product - A, <char*> &f.product - F, <char*> &d.product - D),
        ("post_product", <char*> &a.post_product - A, <char*> &f.post_product - F,
         <char*> &d.post_product - D),
        ("sizeof", sizeof(StepAny), sizeof(StepFloat), sizeof(StepDouble)),
    ]
    for name, offset_any, offset_float, offset_double in fields:
        if not offset_any == offset_float == offset_double:
            raise ImportError(f"{module}: the step structs disagree at {name} (StepAny, "
                              f"StepFloat, StepDouble: {offset_any}, {offset_float}, "
                              f"{offset_double})")
    return fields
