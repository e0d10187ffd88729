# msagen build.  `make` builds the library and CLI; `make test` runs the TAP
# suite with prove; `make SAN=1 test` builds with ASan/UBSan into build-san/.
CUDA_HOME ?= /usr/local/cuda
LUA_INC   ?= /usr/include/lua5.4
LUA_LIB   ?= $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/liblua5.4.a /usr/lib/aarch64-linux-gnu/liblua5.4.a /usr/lib/liblua5.4.a))
# Debian's static Lua is not PIC, so the shared library (for Python) links
# the shared one and carries a copy of it beside itself.
LUA_SO    ?= $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/liblua5.4.so.0 /usr/lib/aarch64-linux-gnu/liblua5.4.so.0 /usr/lib/liblua5.4.so.0))

CC      ?= cc
WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wwrite-strings -Wformat=2 -Wvla
CFLAGS  ?= -O2 -g
ifeq ($(WERROR),1)
WARN    += -Werror
endif
ifeq ($(SAN),1)
B       := build-san
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer
LDSAN   := -fsanitize=address,undefined
else
B       := build
endif
CPPFLAGS := -Iruntime -Igen -I$(LUA_INC) -I$(CUDA_HOME)/include -D_GNU_SOURCE
ALLCFLAGS = -std=c11 -fPIC $(WARN) $(CFLAGS) $(CPPFLAGS)
LDLIBS  := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lnvrtc \
           $(LUA_LIB) -ldl -lpthread -lm $(LDSAN)

LIBSRC  := $(wildcard gen/*.c) $(wildcard runtime/*.c)
LIBOBJ  := $(LIBSRC:%.c=$(B)/%.o) $(B)/templates.o
TEMPL   := $(sort $(wildcard templates/*.cu templates/*.cuh))
TESTSRC := $(wildcard tests/t_*.c)
TESTS   := $(TESTSRC:tests/%.c=$(B)/tests/%)
HDRS    := $(wildcard runtime/*.h gen/*.h)

all: $(B)/msagen $(B)/libmsagen.so $(TESTS) $(B)/bench/jit $(B)/bench/dense_tiles

$(B)/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -c $< -o $@

$(B)/embed: tools/embed.c
	@mkdir -p $(B)
	$(CC) -std=c11 $(WARN) -O1 $< -o $@

$(B)/templates.c: $(B)/embed $(TEMPL)
	$(B)/embed $(TEMPL) > $@.tmp && mv $@.tmp $@

$(B)/templates.o: $(B)/templates.c
	$(CC) $(ALLCFLAGS) -Wno-missing-prototypes -c $< -o $@

$(B)/libmsagen.a: $(LIBOBJ)
	rm -f $@ && ar rcs $@ $^

$(B)/liblua5.4.so.0: $(LUA_SO)
	@mkdir -p $(B)
	cp -L $< $@

$(B)/libmsagen.so: $(LIBOBJ) $(B)/liblua5.4.so.0
	$(CC) -shared -o $@ $(LIBOBJ) -Wl,-rpath,'$$ORIGIN' -L$(CUDA_HOME)/lib64 \
		-Wl,-rpath,$(CUDA_HOME)/lib64 -lnvrtc $(B)/liblua5.4.so.0 -ldl -lpthread -lm $(LDSAN)

TESTHDRS := tests/tap.h tests/files.h tests/ref.h tests/gpu.h cli/check.h cli/tune.h

$(B)/msagen: $(B)/cli/main.o $(B)/cli/check.o $(B)/cli/tune.o $(B)/cli/png.o $(B)/libmsagen.a
	$(CC) -o $@ $^ $(LDLIBS)

$(B)/cli/%.o: cli/%.c $(HDRS) $(TESTHDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -Itests -Icli -c $< -o $@

$(B)/tests/%: tests/%.c $(TESTHDRS) $(B)/cli/check.o $(B)/cli/png.o $(B)/libmsagen.a
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -Itests -Icli $< $(B)/cli/check.o $(B)/cli/png.o $(B)/libmsagen.a -o $@ $(LDLIBS)

$(B)/bench/%: bench/%.c $(B)/libmsagen.a
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) $< $(B)/libmsagen.a -o $@ $(LDLIBS)

# The CPU tests run under prove; GPU tests skip themselves without a GPU.
test: all
	MSAGEN_BIN=$(CURDIR)/$(B)/msagen prove -f --exec '' $(TESTS) tests/t_python.py

# The tests that need neither NVRTC nor a GPU (for the sanitizer build).
CPUTESTS := $(filter %/t_spec %/t_cache %/t_ref %/t_kvdb,$(TESTS))
test-cpu: $(CPUTESTS)
	prove -f --exec '' $(CPUTESTS)

# Set up and run the main job on the default spec: build every MiniMax-M3
# kernel for Hopper, then again to show the warm cache.
run: all
	./$(B)/msagen build specs/minimax-m3.lua --arch sm_90a
	./$(B)/msagen build specs/minimax-m3.lua --arch sm_90a

clean:
	rm -rf build build-san

.PHONY: all test test-cpu run clean
.SECONDARY:
