#!/usr/bin/env bash
# Regenerate the Python protobuf/gRPC modules from grpc_service.proto.
#
#     gateway/proto/generate.sh            # from anywhere; uses .venv/bin/python if present, else $PYTHON or python
#
# The generated grpc_service_pb2.py, grpc_service_pb2.pyi and grpc_service_pb2_grpc.py are committed,
# so the gateway needs no protoc at run time; rerun this after any edit to grpc_service.proto and
# commit the result together with the .proto.
#
# Why protoc runs from the repository root with "-I .": the generated modules then import each other
# as "gateway.proto.grpc_service_pb2", which is how the package is laid out.
#
# Why the generated module is rewritten to use its own descriptor pool: the proto's package is
# "inference" (the gRPC method paths /inference.GRPCInferenceService/... must match what OIP and
# Triton clients call), and tritonclient registers the very same message names in protobuf's
# default pool. Two files defining "inference.ModelInferRequest" in one pool is a hard import error,
# so a process that imports both (tests, tools using tritonclient next to the gateway) would crash.
# A private pool keeps the two apart; the wire format is unaffected.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python; fi
fi

cd "$root"
"$python" -m grpc_tools.protoc -I . \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  gateway/proto/grpc_service.proto

pb2="gateway/proto/grpc_service_pb2.py"
grpc_pb2="gateway/proto/grpc_service_pb2_grpc.py"

# Private descriptor pool (see above).
sed -i 's/^DESCRIPTOR = _descriptor_pool\.Default()\.AddSerializedFile(/_POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = _POOL.AddSerializedFile(/' "$pb2"
grep -q '^_POOL = _descriptor_pool.DescriptorPool()$' "$pb2" || { echo "generate.sh: pool rewrite failed" >&2; exit 1; }

# Older grpc_tools emit a bare "import grpc_service_pb2"; make it a package import.
sed -i 's/^import grpc_service_pb2 as /from gateway.proto import grpc_service_pb2 as /' "$grpc_pb2"
grep -q '^from gateway.proto import grpc_service_pb2 as ' "$grpc_pb2" || { echo "generate.sh: import fix failed" >&2; exit 1; }

echo "generated: $pb2 ${pb2%.py}.pyi $grpc_pb2"
