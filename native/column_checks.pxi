# Column checks shared by the feature kernel (feature_kernel.pyx) and the aggregate engine (aggregates.pyx),
# textually included by both: each reads raw column buffers without bounds checks once these have passed.
# The including module provides FeatureInputError, numpy's C API as ``cnp`` and the fixed-width int types.

cdef _check_array(name, arr, int typenum, Py_ssize_t length, what):
    if not isinstance(arr, np.ndarray):
        raise FeatureInputError(name, f"{what} must be a numpy array, got {type(arr).__name__}")
    cdef cnp.ndarray a = arr
    if cnp.PyArray_TYPE(a) != typenum:
        raise FeatureInputError(name, f"{what} must be {cnp.PyArray_DescrFromType(typenum)}, got {a.dtype}")
    if cnp.PyArray_NDIM(a) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISALIGNED(a):
        raise FeatureInputError(name, f"{what} must be a 1-D C-contiguous aligned array")
    if length >= 0 and cnp.PyArray_DIM(a, 0) != length:
        raise FeatureInputError(name, f"{what} has {a.shape[0]} entries, expected {length}")


cdef _check_offsets(name, cnp.ndarray offsets, bint wide, Py_ssize_t n, Py_ssize_t data_len):
    """Offsets must start >= 0, never decrease and end within the data: the native code reads without checks."""
    cdef const int32_t* o32 = <const int32_t*>cnp.PyArray_DATA(offsets)
    cdef const int64_t* o64 = <const int64_t*>cnp.PyArray_DATA(offsets)
    cdef Py_ssize_t i, bad = -1
    with nogil:
        if wide:
            if o64[0] < 0 or o64[n] > data_len:
                bad = 0
            else:
                for i in range(n):
                    if o64[i + 1] < o64[i]:
                        bad = i + 1
                        break
        else:
            if o32[0] < 0 or o32[n] > data_len:
                bad = 0
            else:
                for i in range(n):
                    if o32[i + 1] < o32[i]:
                        bad = i + 1
                        break
    if bad >= 0:
        raise FeatureInputError(name, f"string offsets are out of range or decreasing (at {bad})")
