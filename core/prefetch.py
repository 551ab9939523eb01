"""Cache prefetch hints for Numba kernels (LLVM's llvm.prefetch).

A prefetch only asks the CPU to start loading a cache line early, so that several memory
misses overlap instead of stalling one after another. It never faults and never changes a
result; with NUMBA_DISABLE_JIT it is a plain-Python no-op.
"""

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _make(rw: int):
    """An intrinsic `f(arr, i)` that prefetches the line holding row `i` of `arr` (rw: 0 read, 1 write)."""
    if numba.config.DISABLE_JIT:
        def noop(arr, i):
            """Plain-Python stand-in: a prefetch is only a hint."""
        return noop

    @intrinsic
    def prefetch(typingctx, arr, i):
        def codegen(context, builder, signature, args):
            arr_type, i_type = signature.args
            array = context.make_array(arr_type)(context, builder, args[0])
            stride = cgutils.unpack_tuple(builder, array.strides, arr_type.ndim)[0]
            offset = builder.mul(context.cast(builder, args[1], i_type, types.intp), stride)
            address = builder.add(builder.ptrtoint(array.data, offset.type), offset)
            i8_ptr, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8_ptr, i32, i32, i32]),
                "llvm.prefetch.p0")
            # access kind, high temporal locality, data cache
            builder.call(fn, [builder.inttoptr(address, i8_ptr), ir.Constant(i32, rw),
                              ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()
        return types.void(arr, i), codegen

    return prefetch


prefetch_read = _make(0)
prefetch_write = _make(1)
