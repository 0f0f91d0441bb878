# Thin wrapper over CMake: `make` builds, `make test` builds and runs the
# tests, `make demo` runs the 4-worker demo. Missing build dependencies are
# installed with apt-get when running as root (otherwise the command to run
# is printed).

BUILD ?= build
BUILD_TYPE ?= RelWithDebInfo
CMAKE_FLAGS ?=
CTEST_FLAGS ?= --output-on-failure -j2
DEB_PACKAGES := cmake ninja-build gcc libsqlite3-dev libcjson-dev pkg-config

.PHONY: all build test demo deps clean format format-check asan tsan fuzz

all: build

deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    (apt-get install -y -q $$missing >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null)) || \
	     { echo "apt-get install failed:$$missing"; exit 1; }; \
	  else \
	    echo "missing build dependencies; run:"; \
	    echo "  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(BUILD)/build.ninja: | deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD)

test: build
	cd $(BUILD) && ctest $(CTEST_FLAGS)

demo: build
	$(BUILD)/drpc demo

asan:
	$(MAKE) test BUILD=build-asan BUILD_TYPE=Debug \
	  CMAKE_FLAGS="-DDRPC_SANITIZE=address,undefined"

tsan:
	$(MAKE) test BUILD=build-tsan BUILD_TYPE=Debug \
	  CMAKE_FLAGS="-DDRPC_SANITIZE=thread"

fuzz:
	fuzz/run.sh $(FUZZ_SECONDS)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	clang-format --dry-run -Werror $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-asan build-tsan
