"""Which kernel variants a CPU runs, and the CPU_MOE_MAX_ISA cap."""
import platform

import pytest

from kernels.cpu_features import MAX_ISA_ENV, VARIANTS, isa_summary, supported_variants

EVERYTHING = frozenset(f for v in VARIANTS for f in v.requires)
x86_only = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 variants")


@x86_only
def test_variants_follow_the_flags(monkeypatch):
    monkeypatch.delenv(MAX_ISA_ENV, raising=False)
    assert [v.name for v in supported_variants(EVERYTHING)] == [v.name for v in VARIANTS]
    assert [v.name for v in supported_variants(frozenset({"avx2", "fma", "f16c"}))] == ["avx2", "generic"]
    assert [v.name for v in supported_variants(frozenset())] == ["generic"]


@x86_only
def test_max_isa_caps_the_variants(monkeypatch):
    monkeypatch.setenv(MAX_ISA_ENV, "avx2")
    assert [v.name for v in supported_variants(EVERYTHING)] == ["avx2", "generic"]
    assert f"{MAX_ISA_ENV}=avx2" in isa_summary()
    monkeypatch.setenv(MAX_ISA_ENV, "avx512_vnni")
    assert [v.name for v in supported_variants(frozenset({"avx2", "fma", "f16c"}))] == ["avx2", "generic"]


def test_a_bad_max_isa_names_the_variable(monkeypatch):
    monkeypatch.setenv(MAX_ISA_ENV, "avx9000")
    with pytest.raises(ValueError, match=f"{MAX_ISA_ENV}='avx9000' is not a kernel variant"):
        supported_variants()
