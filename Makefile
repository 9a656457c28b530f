# Two commands for a new user: `make demo` and `make test`. Both set the machine up first.
VENV      ?= .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.clamp-setup
# the ROS 2 wheels find their libraries through this; tests and nodes need it set
export AMENT_PREFIX_PATH := $(abspath $(VENV))
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
# big images over best-effort QoS need Fast DDS's large-data transports (see docs/perception.md, transport)
export FASTDDS_BUILTIN_TRANSPORTS ?= LARGE_DATA
export OMP_WAIT_POLICY ?= PASSIVE
# MuJoCo renders offscreen through EGL (Mesa on machines without a GPU)
export MUJOCO_GL ?= egl

SETUP_INPUTS := requirements.txt setup.py setup.cfg package.xml tools/setup.sh tools/build_msgs.sh \
                $(wildcard tools/msgs/*/msg/*.msg tools/msgs/*/CMakeLists.txt)

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	bash tools/setup.sh $(VENV)
	@touch $@

demo: setup
	$(VENV)/bin/clamp demo $(DEMO_ARGS)

test: setup
	$(VENV)/bin/ruff check clamp_core clamp_ros test launch
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check clamp_core clamp_ros test launch

bench: setup
	$(VENV)/bin/clamp bench perception

clean:
	rm -rf build install log .pytest_cache demo_out
