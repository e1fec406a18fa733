"""Every C function pace-gguf calls that llama-cpp-python does not declare, declared once.

llama-cpp-python declares llama.h's functions itself (llama_cpp.llama_cpp, one
`ctypes_function_for_shared_library` declaration per symbol); pace-gguf uses those through it.
This module declares the rest: pace-gguf's own API (cpp/src/pace.h), ggml's GGUF reader and writer, its log
and backend-device functions. Like llama-cpp-python it declares each symbol once, on the loaded
library, but on first use (`api()`), because importing pace_gguf must not load the library.

The structs mirror pace.h member for member (names included: `lambda` is the C member and
GGUF key that PaceConfig calls `negative_weight`, see pace_gguf.amb.AMB_SETTINGS).
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from functools import lru_cache
from types import SimpleNamespace

from . import _native
from .errors import NativeLibraryError

MAX_LAYERS = 512  # LLAMA_PACE_MAX_LAYERS


class AmbParams(ctypes.Structure):
    """struct llama_pace_amb_params."""

    _fields_ = [
        ("enabled", ctypes.c_bool),
        ("mode", ctypes.c_int32),
        ("granularity", ctypes.c_int32),
        ("bank_size", ctypes.c_int32),
        ("topk", ctypes.c_int32),
        ("negk", ctypes.c_int32),
        ("store_topk", ctypes.c_int32),
        ("chunk", ctypes.c_int32),
        ("theta_high", ctypes.c_float),
        ("theta_low", ctypes.c_float),
        ("alpha", ctypes.c_float),
        ("w_high", ctypes.c_float),
        ("w_mid", ctypes.c_float),
        ("lambda", ctypes.c_float),
        ("momentum", ctypes.c_float),
        ("n_layers", ctypes.c_int32),
        ("layers", ctypes.c_int32 * MAX_LAYERS),
    ]


class AmbStats(ctypes.Structure):
    """struct llama_pace_amb_stats."""

    _fields_ = [
        ("bank_size", ctypes.c_int32),
        ("n_slots_used", ctypes.c_int32),
        ("n_high", ctypes.c_int64),
        ("n_mid", ctypes.c_int64),
        ("n_low", ctypes.c_int64),
        ("n_invalidations", ctypes.c_int32),
        ("pos_min", ctypes.c_int32),
        ("pos_max", ctypes.c_int32),
    ]


class GGUFInitParams(ctypes.Structure):
    """struct gguf_init_params (gguf.h)."""

    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)  # ggml_log_callback
_SILENT = LOG_CALLBACK(lambda level, text, user_data: None)

_ptr, _i32, _i64, _size, _f32p = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_size_t, ctypes.POINTER(ctypes.c_float)

# name -> (restype, argtypes)
SIGNATURES = {
    # pace.h
    "llama_pace_version": (ctypes.c_char_p, []),
    "llama_pace_rpc_protocol": (ctypes.c_uint32, []),
    "llama_pace_last_error": (ctypes.c_char_p, []),
    "llama_pace_amb_default_params": (AmbParams, []),
    "llama_pace_amb_validate_params": (_i32, [ctypes.POINTER(AmbParams), _i32]),
    "llama_pace_amb_model_params": (_i32, [_ptr, ctypes.POINTER(AmbParams)]),
    "llama_pace_amb_get_params": (_i32, [_ptr, ctypes.POINTER(AmbParams)]),
    "llama_pace_amb_set_params": (_i32, [_ptr, ctypes.POINTER(AmbParams)]),
    "llama_pace_amb_reset": (_i32, [_ptr, _i32]),
    "llama_pace_amb_get_stats": (_i32, [_ptr, _i32, _i32, ctypes.POINTER(AmbStats)]),
    "llama_pace_amb_get_bank": (_i32, [_ptr, _i32, _i32, _f32p, _f32p, _f32p, _f32p, ctypes.POINTER(_i64)]),
    "llama_pace_amb_get_cases": (_i32, [_ptr, _i32, _i32, ctypes.POINTER(_i32), _i32]),
    "llama_pace_amb_evict": (_i32, [_ptr, _i32, _i32, _i32]),
    "llama_pace_amb_memory_size": (_size, [_ptr]),
    "llama_pace_amb_layer_bytes": (_size, [ctypes.POINTER(AmbParams), _i64, ctypes.c_uint32, ctypes.c_uint32]),
    "llama_pace_amb_device_impl": (ctypes.c_int32, [_ptr]),
    # gguf.h: the header reader llama.cpp uses
    "gguf_init_from_file": (_ptr, [ctypes.c_char_p, GGUFInitParams]),
    "gguf_free": (None, [_ptr]),
    "gguf_get_data_offset": (_size, [_ptr]),
    "gguf_get_n_kv": (_i64, [_ptr]),
    "gguf_get_key": (ctypes.c_char_p, [_ptr, _i64]),
    "gguf_find_key": (_i64, [_ptr, ctypes.c_char_p]),
    "gguf_get_kv_type": (ctypes.c_int, [_ptr, _i64]),
    "gguf_get_val_str": (ctypes.c_char_p, [_ptr, _i64]),
    "gguf_get_val_data": (_ptr, [_ptr, _i64]),
    "gguf_get_arr_n": (_size, [_ptr, _i64]),
    "gguf_get_arr_type": (ctypes.c_int, [_ptr, _i64]),
    "gguf_get_arr_data": (_ptr, [_ptr, _i64]),
    "gguf_get_n_tensors": (_i64, [_ptr]),
    "gguf_get_tensor_name": (ctypes.c_char_p, [_ptr, _i64]),
    "gguf_get_tensor_offset": (_size, [_ptr, _i64]),
    "gguf_get_tensor_size": (_size, [_ptr, _i64]),
    "gguf_get_tensor_type": (ctypes.c_int, [_ptr, _i64]),
    "gguf_get_tensor_ne": (ctypes.POINTER(_i64), [_ptr, _i64]),
    "gguf_get_arr_str": (ctypes.c_char_p, [_ptr, _i64, _size]),
    "gguf_get_alignment": (_size, [_ptr]),
    # gguf.h: the writer (metadata edited in a context read from the source, then serialized)
    "gguf_remove_key": (_i64, [_ptr, ctypes.c_char_p]),
    "gguf_set_val_bool": (None, [_ptr, ctypes.c_char_p, ctypes.c_bool]),
    "gguf_set_val_i32": (None, [_ptr, ctypes.c_char_p, _i32]),
    "gguf_set_val_f32": (None, [_ptr, ctypes.c_char_p, ctypes.c_float]),
    "gguf_set_val_str": (None, [_ptr, ctypes.c_char_p, ctypes.c_char_p]),
    "gguf_set_arr_data": (None, [_ptr, ctypes.c_char_p, ctypes.c_int, _ptr, _size]),
    "gguf_get_meta_size": (_size, [_ptr]),
    "gguf_get_meta_data": (None, [_ptr, _ptr]),
    # ggml.h and llama.h: the logs (llama_log_set sets ggml's too); ggml-backend.h: the devices
    "ggml_log_get": (None, [ctypes.POINTER(_ptr), ctypes.POINTER(_ptr)]),
    "ggml_log_set": (None, [_ptr, _ptr]),
    "llama_log_get": (None, [ctypes.POINTER(_ptr), ctypes.POINTER(_ptr)]),
    "llama_log_set": (None, [_ptr, _ptr]),
    "ggml_backend_dev_count": (_size, []),
    "ggml_backend_dev_get": (_ptr, [_size]),
    "ggml_backend_dev_name": (ctypes.c_char_p, [_ptr]),
    "ggml_backend_dev_type": (ctypes.c_int, [_ptr]),
    "ggml_backend_dev_memory": (None, [_ptr, ctypes.POINTER(_size), ctypes.POINTER(_size)]),
    "ggml_backend_dev_description": (ctypes.c_char_p, [_ptr]),
    "ggml_backend_reg_count": (_size, []),
    "ggml_backend_reg_get": (_ptr, [_size]),
    "ggml_backend_reg_name": (ctypes.c_char_p, [_ptr]),
    "ggml_backend_reg_by_name": (_ptr, [ctypes.c_char_p]),
    "ggml_backend_reg_get_proc_address": (_ptr, [_ptr, ctypes.c_char_p]),
    "ggml_backend_register": (None, [_ptr]),
}
# Symbols llama-cpp-python declares too (with its callback type): pace-gguf calls a function object
# of its own, declared with plain pointers (any callback, its or a user's, passes through as it is),
# and leaves llama-cpp-python's declaration alone.
OWN_COPIES = frozenset({"llama_log_get", "llama_log_set"})


@lru_cache(maxsize=None)
def api() -> SimpleNamespace:
    """The functions of SIGNATURES, declared on the loaded libllama (which this loads on first call).

    Except for OWN_COPIES, they are the library's own function objects (`getattr(lib, name)`, as
    llama-cpp-python declares its functions), so code holding the library sees the same declarations."""
    lib = _native.native_library()
    functions = {}
    for name, (restype, argtypes) in SIGNATURES.items():
        try:
            fn = lib[name] if name in OWN_COPIES else getattr(lib, name)
        except AttributeError:
            raise NativeLibraryError(f"{_native.loaded_library_path()} lacks {name}: it is an older or foreign "
                                     "build; reinstall pace-gguf (`pip install .`, see README)") from None
        fn.restype, fn.argtypes = restype, argtypes
        functions[name] = fn
    return SimpleNamespace(**functions)


@contextmanager
def native_log_silenced():
    """llama.cpp's and ggml's log off inside the block, each one's callback (llama-cpp-python's,
    or one the user set) restored after it. For calls whose failures pace-gguf reports itself."""
    c = api()
    ggml_cb, ggml_ud, llama_cb, llama_ud = (ctypes.c_void_p() for _ in range(4))
    c.ggml_log_get(ctypes.byref(ggml_cb), ctypes.byref(ggml_ud))
    c.llama_log_get(ctypes.byref(llama_cb), ctypes.byref(llama_ud))
    c.llama_log_set(ctypes.cast(_SILENT, ctypes.c_void_p), None)  # sets ggml's as well
    try:
        yield
    finally:
        c.llama_log_set(llama_cb, llama_ud)
        c.ggml_log_set(ggml_cb, ggml_ud)
