"""The binary's symbols: APIs capgate must not use (issue 7, "Hostile input").

  * MHD_create_post_processor: request bodies are JSON read by capgate's own
    bounded code, never libmicrohttpd's form parser;
  * evhttp_*: libevent's HTTP server/client is not used (libmicrohttpd serves,
    libcurl forwards);
  * evbuffer_add_reference: no buffer may point at memory capgate frees.

Read with `nm -D` (dynamic imports) and `nm` (the full table, also
statically linked code); when the binary is stripped, `nm` has nothing and
`objdump -T` reads the dynamic table instead.
"""

import os
import re
import shutil
import subprocess

import harness as h

FORBIDDEN_EXACT = ("MHD_create_post_processor",)
# evbuffer_add_reference_with_offset (libevent 2.1) is the same hazard.
FORBIDDEN_PREFIX = ("evhttp_", "evbuffer_add_reference")


def _run(argv):
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    return p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def _names_from_nm(text):
    """Symbol names of `nm` / `nm -D` output ("addr T name", "  U name@VER")."""
    names = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[-2]) == 1:
            names.add(parts[-1].split("@")[0])
    return names


def _names_from_objdump(text):
    """Symbol names of `objdump -T` ("addr l DF *UND* size (VER) name")."""
    names = set()
    for line in text.splitlines():
        if not re.match(r"^[0-9a-fA-F]{8,}\s", line):
            continue
        parts = line.split()
        if parts:
            names.add(parts[-1].split("@")[0])
    return names


def binary_symbols():
    """(names, sources): every symbol name the binary defines or references."""
    h.check_binary()
    binary = os.path.abspath(h.BINARY)
    nm = shutil.which("nm")
    objdump = shutil.which("objdump")
    if not nm and not objdump:
        raise h.HarnessError("neither nm nor objdump is installed (binutils)")
    names, sources = set(), []
    full_table = False
    if nm:
        for argv in ([nm, "-D", binary], [nm, binary]):
            out, err = _run(argv)
            found = _names_from_nm(out or "")
            if found:
                names |= found
                sources.append(os.path.basename(argv[0]) + " " + " ".join(argv[1:-1]))
                full_table = full_table or len(argv) == 2
    # Stripped (plain nm: "no symbols") or no nm: the dynamic table via objdump.
    if objdump and not full_table:
        out, err = _run([objdump, "-T", binary])
        found = _names_from_objdump(out or "")
        if found:
            names |= found
            sources.append("objdump -T")
    h.check(names, "no symbols could be read from %s (nm/objdump gave nothing)" % binary)
    return names, sources


def forbidden(names):
    return sorted(n for n in names
                  if n in FORBIDDEN_EXACT or any(n.startswith(p) for p in FORBIDDEN_PREFIX))


def test_symbol_scan_sees_the_libraries():
    """The scan itself works: the libraries capgate does use show up."""
    names, sources = binary_symbols()
    for want in ("MHD_start_daemon", "event_base_new"):
        h.check(want in names, "%s not among the binary's symbols (read with %s): the symbol "
                "scan is broken, so the forbidden-symbol test would prove nothing"
                % (want, ", ".join(sources)))


def test_no_forbidden_symbols():
    names, sources = binary_symbols()
    bad = forbidden(names)
    h.check(not bad, "the binary references %s (read with %s); capgate must not use "
            "MHD_create_post_processor, evhttp_* or evbuffer_add_reference"
            % (", ".join(bad), ", ".join(sources)))


def test_forbidden_matcher():
    """The matcher catches what it must and nothing else."""
    h.check(forbidden({"MHD_create_post_processor", "evhttp_new", "evhttp_request_free",
                       "evbuffer_add_reference", "evbuffer_add", "MHD_create_response_from_buffer",
                       "event_base_new", "evbuffer_add_reference_with_offset"}) ==
            ["MHD_create_post_processor", "evbuffer_add_reference",
             "evbuffer_add_reference_with_offset", "evhttp_new", "evhttp_request_free"], "forbidden() matches the wrong names")
    h.check(_names_from_nm("                 U evhttp_new@LIBEVENT_2.1\n"
                           "0000000000001234 T main\n") == {"evhttp_new", "main"},
            "nm output parsed wrongly")
    h.check(_names_from_objdump(
        "0000000000000000      DF *UND*\t0000000000000000 (libevent-2.1.so.7) evhttp_new\n")
        == {"evhttp_new"}, "objdump -T output parsed wrongly")
