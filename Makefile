# capgate -- top-level Makefile.
#
#   make            build build/capgate
#   make run        install missing packages, build, start a private Redis and capgate
#   make test       install missing packages, build, run every unit and black-box test
#   make check      alias of test
#   make SAN=1 ...  the same with ASan + UBSan
#   make deb        build/capgate_<version>_<arch>.deb (make test-deb: build, lintian, install, check, purge)
#   make lint-openapi  Spectral and Redocly on docs/openapi.yaml
#   make clean

VERSION  := 0.1.0
PREFIX   ?= /usr/local
DESTDIR  ?=

CC       ?= cc
PKGS     := libevent libmicrohttpd hiredis jansson libfyaml libsodium libsystemd libcurl gnutls
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

OPT      ?= -O2 -g
WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wpointer-arith -Wformat=2 -Wno-unused-parameter
CFLAGS   += -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) -Iinclude -Ibuild/gen $(PKG_CFLAGS) \
            -DCAPGATE_VERSION=\"$(VERSION)\" -MMD -MP
LDLIBS   += $(PKG_LIBS) -lm

ifeq ($(SAN),1)
  CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
  BUILD   := build/san
else
  BUILD   := build
endif

SRCS     := $(wildcard src/*.c)
LIB_SRCS := $(filter-out src/main.c,$(SRCS))
OBJS     := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(SRCS)) $(BUILD)/obj/lua_scripts.o \
            $(BUILD)/obj/assets.o
LIB_OBJS := $(filter-out $(BUILD)/obj/main.o,$(OBJS))
LUA      := $(wildcard src/lua/*.lua)
LUA_LIB  := $(wildcard src/lua/lib/*.lua)
ASSETS   := src/status.html
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRCS))

# Debian packages needed to build, run and test (installed on demand by `make deps`).
DEB_PKGS := build-essential pkg-config libevent-dev libmicrohttpd-dev libhiredis-dev \
            libjansson-dev libfyaml-dev libsodium-dev libsystemd-dev libcurl4-openssl-dev \
            libgnutls28-dev \
            redis-server python3 tzdata \
            wrk curl chromium chromium-driver valgrind libfyaml-utils man-db groff-base systemd openssl \
            nginx-light lintian

.PHONY: all deps run test check unit test-valgrind clean install bench lint-openapi deb test-deb
all: $(BUILD)/capgate

# V=1 shows the full commands.
Q := $(if $(V),,@)

$(BUILD)/capgate: $(OBJS)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/obj/%.o: src/%.c | $(BUILD)/obj build/gen/lua_scripts.h build/gen/assets.h
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

# Lua scripts and the status page are embedded as C strings: the source of
# truth stays in src/lua/*.lua and src/status.html; src/lua/lib/ holds what
# several scripts include.
build/gen/lua_scripts.c build/gen/lua_scripts.h &: $(LUA) $(LUA_LIB) tools/embed.sh | build/gen
	$(Q)sh tools/embed.sh build/gen/lua_scripts lua $(LUA)

build/gen/assets.c build/gen/assets.h &: $(ASSETS) tools/embed.sh | build/gen
	$(Q)sh tools/embed.sh build/gen/assets asset $(ASSETS)

$(BUILD)/obj/lua_scripts.o: build/gen/lua_scripts.c | $(BUILD)/obj
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/obj/assets.o: build/gen/assets.c | $(BUILD)/obj
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

# A unit test that includes its module's source, to reach its static
# functions (as h2o's t/00unit does), links without that module's object.
unit_own = $(if $(shell grep -qs '^\#include "../../src/$(patsubst test_%,%,$(1)).c"' tests/unit/$(1).c && echo y),$(BUILD)/obj/$(patsubst test_%,%,$(1)).o)
$(BUILD)/tests/%: tests/unit/%.c $(LIB_OBJS) | $(BUILD)/tests
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) -Itests/unit $(LDFLAGS) -o $@ $< $(filter-out $(call unit_own,$*),$(LIB_OBJS)) $(LDLIBS)

$(BUILD)/obj $(BUILD)/tests build/gen:
	mkdir -p $@

# The npm tools (OpenAPI linters, a reference logfmt parser) go into
# build/npm-tools; without the npm registry the tests that need them say
# they skip, so deps does not fail for them.
deps:
	@sh tools/deps.sh $(DEB_PKGS)
	@sh tools/npm-tools.sh || echo "note: npm tools unavailable; the OpenAPI lint and the logfmt parser check skip"

# Spectral (spectral:oas) and Redocly on docs/openapi.yaml: any warning fails.
lint-openapi:
	@sh tools/openapi-lint.sh

unit: $(UNIT_BINS)

run: deps
	@$(MAKE) --no-print-directory all
	@sh tools/run.sh $(BUILD)/capgate

test: deps
	@$(MAKE) --no-print-directory all unit
	@sh tools/promtool.sh build/tools || echo "note: promtool unavailable; /metrics checked by the suite's own parser"
	@sh tools/openapi-lint.sh
	@$(if $(filter 1,$(SAN)),echo "note: the package test runs without SAN",sh tests/deb/run.sh)
	@CAPGATE_SANITIZED=$(SAN) PATH="$$PATH:$(CURDIR)/build/tools/usr/bin" sh tests/run.sh $(BUILD)

check: test

# The black-box suite with every daemon under valgrind memcheck: any invalid
# access or definite leak in a daemon's stderr fails the test that ran it.
VALGRIND := valgrind -q --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite
# Not the cluster, hard-fault and browser suites: their time bounds (answers
# within timeout_ms + 50 ms, failover within seconds) cannot hold at
# valgrind's 20-50x slowdown; they run plain and under ASan+UBSan.
VALGRIND_MODULES := test_cli test_validation test_http test_decide test_consent test_quiet_hours \
                    test_concurrency test_privacy test_trust test_proxy test_ops test_faults \
                    test_openapi test_symbols test_unsubscribe test_campaign_names
test-valgrind: deps
	@$(MAKE) --no-print-directory all unit
	@CAPGATE_WRAP="$(VALGRIND)" BLACKBOX_ARGS="$(VALGRIND_MODULES)" \
		PATH="$$PATH:$(CURDIR)/build/tools/usr/bin" sh tests/run.sh $(BUILD)

# make fuzz [FUZZ_SECONDS=60]: the libFuzzer harnesses of tests/fuzz/.
include tests/fuzz/Makefile.inc

# make bench: throughput, latency, Redis CPU and memory per person, RSS,
# against the floor of our stack and a redis-benchmark-like ceiling; prints
# figures and the targets met.  A benchmark reports; it does not fail.
include tests/bench/Makefile.inc
bench: deps
	@$(MAKE) --no-print-directory all bench-bins
	@sh tests/bench/run.sh $(BUILD)

# PREFIX=/usr DESTDIR=/tmp/pkg make install: binary, example config (never
# overwritten), systemd unit + sysusers + tmpfiles, man pages.
install: all
	@DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" BINARY="$(BUILD)/capgate" sh tools/install.sh

# make deb: build/capgate_$(VERSION)_<arch>.deb (tools/deb.sh, dpkg-deb).
deb: all
	@VERSION="$(VERSION)" BINARY="$(BUILD)/capgate" sh tools/deb.sh

# The package built, lintian-checked, installed here (root), checked with
# capgate -t and systemd-analyze, and purged again (tests/deb/run.sh).
test-deb: deps
	@sh tests/deb/run.sh

clean:
	rm -rf build

-include $(wildcard $(BUILD)/obj/*.d $(BUILD)/tests/*.d)
