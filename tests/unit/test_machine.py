"""carve.machine: the CPU's model and features read from /proc/cpuinfo, never assumed."""

from __future__ import annotations

from carve import machine

INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480C
flags\t\t: fpu sse avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: another line that is not read
"""
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 fma avx512f avx512_bf16\n"
OLD = "processor\t: 0\nmodel name\t: AMD EPYC 7R13\nflags\t\t: fpu avx2 fma\n"


def test_model_and_features_from_cpuinfo(tmp_path) -> None:
    expected = [(INTEL, "Intel(R) Xeon(R) Platinum 8480C", "amx"), (EPYC, "AMD EPYC 9R14", "avx512_bf16")]
    for text, model, units in [*expected, (OLD, "AMD EPYC 7R13", "none")]:
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        assert machine.cpu_model(path) == model
        assert machine.bf16_units(machine.cpu_features(path)) == units
    path.write_text(INTEL)
    assert machine.cpu_features(path) == ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile",
                                          "amx_bf16", "amx_int8"]  # fmt: skip


def test_no_cpuinfo_still_names_something(tmp_path) -> None:
    assert machine.cpu_model(tmp_path / "absent") and machine.cpu_features(tmp_path / "absent") == []


def test_this_machine_is_described() -> None:
    info = machine.describe()
    assert info["cpu"] and info["usable_cpus"] >= 1 and info["bf16_units"] in ("amx", "avx512_bf16", "none")
