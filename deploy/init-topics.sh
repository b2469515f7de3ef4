#!/usr/bin/env bash
# Create twinflag's topics, once, with their partition counts; exit 0 when they all exist.
#
# Run by docker-compose's one-shot `init` service (apache/kafka image) and usable as a Kubernetes Job.
# Idempotent: an existing topic is left as it is. A topic with fewer partitions than asked is reported,
# not altered: adding partitions to `documents` re-maps keys to partitions and breaks per-key order, so
# that is a decision for an operator (kafka-topics.sh --alter), not for a start-up script.
#
# Environment (defaults in brackets):
#   BOOTSTRAP_SERVERS [kafka:9092]   KAFKA_BIN [/opt/kafka/bin]   REPLICATION_FACTOR [1]
#   DOCUMENTS_PARTITIONS [6]  FLAGS_PARTITIONS [6]  DLQ_PARTITIONS [1]  DECISIONS_PARTITIONS [6]
#   DOCUMENTS_TOPIC [documents]  FLAGS_TOPIC [duplicate-flags]  DLQ_TOPIC [documents.dlq]
#   DECISIONS_TOPIC [decisions]  WAIT_S [120]  COMMAND_CONFIG (a client properties file for SASL/TLS)
#   DOCUMENTS_TIMESTAMP_TYPE [LogAppendTime]: the broker stamps documents as they arrive, so a producer
#   cannot backdate a repost to before its original ("earlier" is by record timestamp)
set -euo pipefail

bootstrap="${BOOTSTRAP_SERVERS:-kafka:9092}"
topics_cli="${KAFKA_BIN:-/opt/kafka/bin}/kafka-topics.sh"
replication="${REPLICATION_FACTOR:-1}"
wait_s="${WAIT_S:-120}"
client=(--bootstrap-server "$bootstrap")
if [[ -n "${COMMAND_CONFIG:-}" ]]; then
  client+=(--command-config "$COMMAND_CONFIG")
fi

# A dead letter carries the original record in base64 (4/3 of its size) plus its reason: room for a
# 1 MB record (the worker's default TWINFLAG_MAX_MESSAGE_BYTES), as the worker itself would create it.
dlq_max_bytes="${DLQ_MAX_MESSAGE_BYTES:-2065536}"

deadline=$((SECONDS + wait_s))
until "$topics_cli" "${client[@]}" --list > /dev/null 2>&1; do
  if ((SECONDS >= deadline)); then
    echo "init-topics: no broker at $bootstrap after ${wait_s}s" >&2
    exit 1
  fi
  sleep 2
done

create() {  # name partitions [--config k=v ...]
  local name="$1" partitions="$2"
  shift 2
  "$topics_cli" "${client[@]}" --create --if-not-exists --topic "$name" \
    --partitions "$partitions" --replication-factor "$replication" "$@"
  local have
  have="$("$topics_cli" "${client[@]}" --describe --topic "$name" | grep -c 'Partition: ' || true)"
  if [[ "$have" =~ ^[0-9]+$ ]] && ((have > 0 && have < partitions)); then
    echo "init-topics: $name has $have partitions, fewer than the $partitions asked; left as it is" >&2
  fi
  echo "init-topics: $name ready (${have:-?} partitions)"
}

create "${DOCUMENTS_TOPIC:-documents}" "${DOCUMENTS_PARTITIONS:-6}" \
  --config "message.timestamp.type=${DOCUMENTS_TIMESTAMP_TYPE:-LogAppendTime}"
# Flags are keyed by document id and replays republish identical bytes: compaction collapses them.
create "${FLAGS_TOPIC:-duplicate-flags}" "${FLAGS_PARTITIONS:-6}" --config cleanup.policy=compact,delete
create "${DLQ_TOPIC:-documents.dlq}" "${DLQ_PARTITIONS:-1}" --config "max.message.bytes=$dlq_max_bytes"
create "${DECISIONS_TOPIC:-decisions}" "${DECISIONS_PARTITIONS:-6}" --config cleanup.policy=compact,delete
echo "init-topics: done"
