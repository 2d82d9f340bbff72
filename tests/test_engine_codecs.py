"""engine.CODECS comes from the built extension, so an engine built without a codec refuses it (with a message
naming it) in every front door; and the C++ engine's default compressed algorithm is the documented 'auto'.
In-process (one rank, no mpirun); the extension lacking a codec is simulated in a subprocess."""
import subprocess
import sys
import textwrap

from neptune_rt import _C, engine


def test_codecs_come_from_the_extension():
    assert engine.CODECS == (*_C.codec_names(), "auto", "auto_lowbit")
    assert [engine.codec_id(c) for c in _C.codec_names()] == list(range(len(_C.codec_names())))


def test_an_engine_without_a_codec_refuses_it():
    script = textwrap.dedent("""
        import importlib
        import neptune_rt._C as C
        names = [n for n in C.codec_names() if n != "onebit"]
        C.codec_names = lambda: names  # as if the extension were built without onebit
        import neptune_rt.engine as engine
        importlib.reload(engine)
        assert "onebit" not in engine.CODECS and "int8" in engine.CODECS, engine.CODECS
        try:
            engine.codec_id("onebit")
        except ValueError as err:
            assert "onebit" in str(err), err
        else:
            raise AssertionError("codec_id accepted a codec the engine lacks")
        engine.codec_id("int8")
        from neptune_rt.torch import compression, comm_hook
        for make in (lambda: compression.require_codec("onebit"),
                     lambda: comm_hook.CommHookState(codec="onebit")):
            try:
                make()
            except RuntimeError as err:
                assert "'onebit'" in str(err) and "not available" in str(err), err
            else:
                raise AssertionError("an unavailable codec was accepted")
        comm_hook.CommHookState(codec="int8")
        print("REFUSED-OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "REFUSED-OK" in proc.stdout, proc.stdout + proc.stderr


def test_default_compressed_algorithm_is_auto():
    assert "compressed_algorithm: str = 'auto'" in _C.Engine.__init__.__doc__
    assert _C.choose_compressed_algorithm(4) == "ring" and _C.choose_compressed_algorithm(16) == "two_phase"
