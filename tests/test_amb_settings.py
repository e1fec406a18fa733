"""The C bindings (pace_gguf._bindings) and the one table of AMB settings (amb.AMB_SETTINGS) agree
with the library and with what is made from them: PaceConfig's C struct, the CLI's --amb-* flags."""

import argparse
import ctypes
import dataclasses

import numpy as np
import pytest

from pace_gguf import _bindings, amb, cli_args, gguf_file
from pace_gguf._native import llama_cpp_module
from pace_gguf.errors import ModelFileError


def test_every_binding_is_declared_on_the_library_once_and_by_pace_gguf_alone():
    api, lcpp = _bindings.api(), llama_cpp_module()
    for name, (restype, argtypes) in _bindings.SIGNATURES.items():
        fn = getattr(api, name)
        assert (fn.restype, fn.argtypes) == (restype, argtypes), name
        if name in _bindings.OWN_COPIES:  # llama-cpp-python's declaration of it stays as it was
            assert hasattr(lcpp.llama_cpp, name) and fn is not getattr(lcpp.llama_cpp._lib, name), name
        else:  # the library's own function object, which llama-cpp-python does not declare
            assert fn is getattr(lcpp.llama_cpp._lib, name), name
            assert not hasattr(lcpp.llama_cpp, name), f"llama-cpp-python declares {name}: add it to OWN_COPIES"
    assert api is _bindings.api()


def test_the_table_covers_every_config_field_and_struct_member():
    assert [s.name for s in amb.AMB_SETTINGS] == [f.name for f in dataclasses.fields(amb.PaceConfig)]
    members = {name for name, _ in _bindings.AmbParams._fields_}
    assert {s.key for s in amb.AMB_SETTINGS} | {"n_layers"} == members
    assert {s.key: s.gguf_key for s in amb.AMB_SETTINGS}["lambda"] == "pace.amb.lambda"
    assert {s.name: s.key for s in amb.AMB_SETTINGS if s.name != s.key} == {"negative_weight": "lambda"}


def _float32(config: amb.PaceConfig) -> amb.PaceConfig:
    return config.replace(**{s.name: float(np.float32(getattr(config, s.name)))
                             for s in amb.AMB_SETTINGS if s.kind is float})


def test_pace_config_defaults_are_the_c_librarys():
    assert amb.default_config() == _float32(amb.PaceConfig())


def test_every_setting_goes_to_its_c_member_and_back():
    changed = amb.PaceConfig(enabled=True, layers=(7, 3), bank_size=11, theta_high=0.875, theta_low=0.125, topk=3,
                             negk=1, store_topk=4, alpha=0.375, w_high=1.5, w_mid=0.625, negative_weight=0.25,
                             momentum=0.75, chunk=64, mode="paper", granularity="prompt")
    assert all(getattr(changed, s.name) != s.default for s in amb.AMB_SETTINGS)
    p = changed._to_c()
    assert getattr(p, "lambda") == 0.25 and (p.mode, p.granularity, p.n_layers) == (1, 1, 2)
    assert amb.PaceConfig._from_c(p) == changed
    amb.validate_config(changed, n_layer=8)  # the C library reads the same struct


@pytest.mark.parametrize("changes, message", [
    ({"mode": "fast"}, "mode must be one of ('code', 'paper'), got 'fast'"),
    ({"bank_size": 1.5}, "bank_size must be an integer in the int32 range, got 1.5"),
    ({"negative_weight": "x"}, "negative_weight must be a number, got 'x'"),
    ({"layers": (1, 2**40)}, "layers must be integers in the int32 range"),
])
def test_a_value_c_cannot_hold_is_refused_by_name(changes, message):
    with pytest.raises(amb.PaceConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        amb.PaceConfig().replace(**changes)._to_c()


def test_the_cli_flags_come_from_the_table():
    parser = argparse.ArgumentParser()
    cli_args.add_amb_args(parser)
    assert [s.name for s in cli_args.AMB_FLAGS] == ["layers", "bank_size", "theta_high", "theta_low", "alpha",
                                                    "mode", "granularity"]
    given = {"layers": ("1,2", (1, 2)), "bank_size": ("7", 7), "theta_high": ("0.5", 0.5), "theta_low": ("0.1", 0.1),
             "alpha": ("0.3", 0.3), "mode": ("paper", "paper"), "granularity": ("prompt", "prompt")}
    argv = [word for s in cli_args.AMB_FLAGS for word in (s.flag, given[s.name][0])]
    changes = cli_args.pace_changes(parser.parse_args(argv + ["--no-amb"]))
    assert changes == {name: value for name, (_, value) in given.items()} | {"enabled": False}
    assert "--amb-bank" in parser.format_help() and "slots per bank (default 100)" in parser.format_help()


def test_a_header_check_silences_the_log_only_while_it_runs(tmp_path):
    """check_gguf silences llama.cpp's log around ggml's parse (which logs why a file is bad) and
    gives back whatever callback was set before: here a user's, which must see nothing of it."""
    lcpp = llama_cpp_module()
    seen = []
    users = lcpp.llama_log_callback(lambda level, text, user_data: seen.append(text))
    before = lcpp.llama_log_callback()
    lcpp.llama_log_get(ctypes.byref(before), ctypes.byref(ctypes.c_void_p()))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 60)
    lcpp.llama_log_set(users, None)
    try:
        with pytest.raises(ModelFileError, match="header is truncated or corrupt"):
            gguf_file.check_gguf(bad)
        assert seen == []
        llama_now, ggml_now = lcpp.llama_log_callback(), ctypes.c_void_p()
        lcpp.llama_log_get(ctypes.byref(llama_now), ctypes.byref(ctypes.c_void_p()))
        _bindings.api().ggml_log_get(ctypes.byref(ggml_now), ctypes.byref(ctypes.c_void_p()))
        users_address = ctypes.cast(users, ctypes.c_void_p).value
        assert ctypes.cast(llama_now, ctypes.c_void_p).value == ggml_now.value == users_address
    finally:
        lcpp.llama_log_set(before, None)


# Values at and beyond each rule's edges, for the settings the PyTorch reference shares with the
# runtime (within the C library's memory caps on bank_size and chunk, which the oracle does not need).
EDGES = {
    "bank_size": [-1, 0, 1, 100, 4096], "topk": [-1, 0, 1, 7], "negk": [-1, 0, 3], "store_topk": [-1, 0, 1, 9],
    "chunk": [-5, 0, 1, 1024],
    "theta_high": [-0.01, 0.0, 0.5, 1.0, 1.01, float("nan"), float("inf")],
    "theta_low": [-0.01, 0.0, 0.25, 0.75, 0.76, 1.0, float("nan")],
    "alpha": [-1e-7, 0.0, 1e-7, 1.0, 1.5, float("nan")], "momentum": [-0.5, 0.0, 0.99, 1.0, 2.0],
    "w_high": [-3.0, 0.0, 1e30, float("inf"), float("nan")], "w_mid": [-1.0, 2.5, float("-inf")],
    "negative_weight": [-0.1, 0.0, 1e-7, float("nan")], "mode": ["code", "paper", "fast"],
}


def test_the_reference_and_the_c_library_accept_the_same_values():
    """The reference's own validation (written from the spec) and the C library's rules agree on
    every shared setting; theta_low is checked against theta_high's default 0.75."""
    from pace_gguf.reference import AmbConfig

    shared = {s.name for s in amb.AMB_SETTINGS} & {f.name for f in dataclasses.fields(AmbConfig)}
    assert shared == set(EDGES)
    for name, values in EDGES.items():
        for value in values:
            try:
                AmbConfig(**{name: value})
                reference_accepts = True
            except ValueError:
                reference_accepts = False
            try:
                amb.validate_config(amb.PaceConfig().replace(**{name: value}), n_layer=30)
                c_accepts = True
            except amb.PaceConfigError:
                c_accepts = False
            assert reference_accepts == c_accepts, f"{name}={value!r}: reference {reference_accepts}, C {c_accepts}"


def test_the_reference_defaults_are_the_tables():
    from pace_gguf.reference import AmbConfig

    reference = AmbConfig()
    assert all(getattr(reference, s.name) == s.default for s in amb.AMB_SETTINGS if hasattr(reference, s.name))
