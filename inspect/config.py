"""The line's configuration (``line.yaml``): one typed model, loaded from YAML and overridden on the command line.

    cfg = load_line_config("line.yaml", ["source.rate=30", "model.backend=ort-int8"])
    print(example_config())        # `lineguard inspect config --example`: every key, commented

Unknown keys are errors with a suggestion (``StrictModel``); an override is ``dotted.key=value`` with the value
read as YAML (``30``, ``true``, ``[a, b]``). Torch-free, Python 3.8.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import yaml
from pydantic import Field, model_validator

from lineguard.config import ConfigError, StrictModel, read_mapping, validated
from lineguard.sim import SimulatorConfig

from .archive import ArchiveConfig
from .cameras import FolderSourceConfig, GenicamSourceConfig, VideoSourceConfig
from .sinks import LogSinkConfig, SinkConfig
from .stream import StreamSourceConfig

__all__ = ["DeadlineConfig", "LineConfig", "MetricsConfig", "ModelConfig", "PolicyConfig", "SimSourceConfig",
           "example_config", "load_line_config"]


class SimSourceConfig(StrictModel):
    """The virtual camera: simulated parts (``lineguard.sim``) at ``rate`` parts/s, with their true class."""

    kind: Literal["sim"] = "sim"
    rate: float = Field(30.0, ge=0.0, description="parts per second; 0 = as fast as the line takes them")
    parts: int = Field(0, ge=0, description="parts to hand over, then end; 0 = endless")
    seed: int = 0
    pool: int = Field(0, ge=0, description="render this many parts once and cycle them (0: render every part)")
    sim: SimulatorConfig = Field(default_factory=SimulatorConfig)


SourceConfig = Union[SimSourceConfig, FolderSourceConfig, VideoSourceConfig, StreamSourceConfig, GenicamSourceConfig]


class ModelConfig(StrictModel):
    path: Path = Field(..., description="model folder or exported model file; watched for hot-swap")
    backend: str = Field("auto", description="auto (the export's choice: INT8 where it kept one and found it "
                                             "faster here) | ort | ort-int8 | trt")
    device: Optional[str] = Field(None, description="cpu | cuda[:N] | dla:N (default: the backend's)")
    key: Optional[str] = Field(None, description="which engine of a folder with several (trt)")
    threads: Optional[int] = Field(None, ge=1, description="ONNX Runtime threads (default: all cores)")
    watch_s: float = Field(2.0, ge=0.0, description="how often to look for a new model; 0 = never")


class PolicyConfig(StrictModel):
    """Overrides of the model's decision settings (model.yaml); unset keeps the model's."""

    threshold: Optional[float] = None
    uncertain_band: Optional[float] = None
    class_thresholds: Optional[Dict[str, float]] = None
    box_threshold: Optional[float] = None
    min_box_area: Optional[int] = None


class DeadlineConfig(StrictModel):
    """When a part's decision must be at the ejector: ``ms`` directly, or from the line's geometry
    (distance / belt speed - actuator time - margin)."""

    ms: Optional[float] = Field(None, gt=0)
    distance_mm: Optional[float] = Field(None, gt=0, description="camera to ejector")
    belt_speed_mm_s: Optional[float] = Field(None, gt=0)
    actuator_ms: float = Field(0.0, ge=0)
    margin_ms: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _one_way(self) -> DeadlineConfig:
        geometry = self.distance_mm is not None or self.belt_speed_mm_s is not None
        if self.ms is None and not geometry:
            self.ms = 200.0
        elif self.ms is not None and geometry:
            raise ValueError("give either ms or distance_mm + belt_speed_mm_s, not both")
        elif self.ms is None and (self.distance_mm is None or self.belt_speed_mm_s is None):
            raise ValueError("distance_mm and belt_speed_mm_s go together")
        if self.seconds <= 0:
            raise ValueError(f"the deadline is {self.seconds * 1000:.1f} ms: the ejector cannot be reached in time")
        return self

    @property
    def seconds(self) -> float:
        if self.ms is not None:
            return self.ms / 1000.0
        assert self.distance_mm is not None and self.belt_speed_mm_s is not None
        return self.distance_mm / self.belt_speed_mm_s - (self.actuator_ms + self.margin_ms) / 1000.0


class MetricsConfig(StrictModel):
    port: int = Field(9108, ge=0, le=65535, description="Prometheus /metrics, /healthz, /readyz; 0 = off")
    host: str = "127.0.0.1"


class LineConfig(StrictModel):
    """``lineguard inspect run --config line.yaml``."""

    line: str = "line-1"
    station: str = "station-1"
    camera: str = "camera-1"
    source: SourceConfig = Field(default_factory=SimSourceConfig, discriminator="kind")
    model: ModelConfig
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    mode: Literal["trigger", "free-run"] = Field("trigger", description="trigger: every frame is a part")
    queue: int = Field(64, ge=1, le=4096, description="frames waiting for inference (trigger mode)")
    batch: int = Field(8, ge=1, le=256, description="largest micro-batch (within the model's batch range)")
    deadline: DeadlineConfig = Field(default_factory=DeadlineConfig)
    frame_size: Optional[List[int]] = Field(None, min_length=2, max_length=2,
                                            description="[height, width] the camera delivers; others: bad frames")
    outputs: List[SinkConfig] = Field(default_factory=lambda: [LogSinkConfig()])
    db: Path = Field(Path("results.db"), description="SQLite results database")
    archive: Optional[ArchiveConfig] = Field(None, description="image archive; none: no images kept")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    drain_s: float = Field(10.0, ge=0, description="SIGTERM: how long queued parts may take to be decided")


def _set(data: Dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[keys[-1]] = value


def load_line_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> LineConfig:
    """The config in ``path`` (optional), then ``overrides`` (``key.sub=value``); relative paths
    in the file stay relative to the working directory. Anything unusable is one :class:`ConfigError` line."""
    data: Dict[str, Any] = {"source": {"kind": "sim"}}  # overrides of the default source apply
    if path is not None:
        data.update(read_mapping(path, empty=True))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}': expected key=value (e.g. source.rate=30)")
        top = key.split(".")[0]
        if top not in LineConfig.model_fields:
            close = difflib.get_close_matches(top, list(LineConfig.model_fields), n=1)
            raise ConfigError(f"override '{item}': unknown key '{top}'" + (f" (did you mean '{close[0]}'?)" if close
                                                                           else ""))
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        _set(data, key.strip(), value)
    where = str(path) if path is not None else "line config"
    return validated(LineConfig, data, where + (" + command line" if overrides else ""))


EXAMPLE = """\
# lineguard inspect run --config line.yaml [--set key.sub=value ...]
line: line-1                 # ids recorded with every part and in the metrics' labels
station: station-1
camera: camera-1
source:                      # where frames come from; one of:
  kind: sim                  #   sim (the virtual camera, with ground truth), folder, video, rtsp, usb, genicam
  rate: 30                   #   parts per second (sim); 0 = as fast as the line takes them
  parts: 0                   #   0 = endless
  seed: 0
  sim: {size: 256}           #   the simulator's settings (lineguard data simulate --config)
# source: {kind: folder, path: /data/incoming, watch: true}
# source: {kind: rtsp, url: "rtsp://10.0.0.5:554/stream1", timeout_s: 2.0}
# source: {kind: genicam, cti: /opt/mvIMPACT/lib/producer.cti, trigger: true}
model:
  path: runs/demo/model      # a model folder or file; a new export there is loaded, checked and swapped in
  backend: auto              # auto: the export's choice (INT8 where it was kept and faster here) | ort | ort-int8 | trt
  device: null               # cpu | cuda[:N] | dla:N
  key: null                  # which engine of several (trt)
  watch_s: 2.0               # how often to look for a new model; 0 = never
policy:                      # overrides of model.yaml's decision settings (unset: the model's)
  threshold: null
  uncertain_band: null       # OK below threshold - band, NG from threshold + band, UNCERTAIN between
  class_thresholds: null     # {scratch: 0.3}: NG when that class's probability reaches it
mode: trigger                # trigger: one frame = one part, never dropped; free-run: latest frame only
queue: 64                    # frames waiting for inference; a full queue rejects the part (NG overflow)
batch: 8                     # largest micro-batch
deadline:                    # a part not decided in time is rejected (NG deadline)
  ms: 200                    # or: distance_mm, belt_speed_mm_s, actuator_ms, margin_ms
frame_size: null             # [height, width] the camera delivers: frames of another size are NG bad-frame
outputs:                     # reject signals; each runs isolated, retried within the deadline
  - kind: log
# - {kind: modbus, host: 192.168.0.10, port: 502, unit: 1, coil: 0, timeout_s: 0.2}
# - {kind: opcua, url: "opc.tcp://192.168.0.11:4840/", node: "ns=2;s=Line1.Reject", timeout_s: 0.5}
db: results.db               # SQLite (WAL, synchronous=FULL): one row per part
archive:                     # images of NG and UNCERTAIN parts and a sample of OK ones; null: none
  path: archive
  ok_sample_rate: 0.01
metrics:
  port: 9108                 # /metrics (Prometheus), /healthz, /readyz; 0 = off
  host: 127.0.0.1
drain_s: 10                  # SIGTERM: queued parts are decided (or rejected fail-safe) within this
"""


def example_config() -> str:
    """A commented example of every key (checked to load in the tests)."""
    return EXAMPLE
