#!/usr/bin/env bash
# Create the webhook certificate Secret for installs without Helm's generator or cert-manager
# (the plain manifests): a private CA and a serving certificate for the webhook Service.
#
#   scripts/create-webhook-secret.sh [--namespace NS] [--service NAME] [--secret NAME] [--days N]
#                                    [--out DIR]
#
# Without --out it runs `kubectl create secret` (kubectl from $KUBECTL or PATH, current context);
# with --out it only writes ca.crt, tls.crt and tls.key into DIR. Needs openssl.
set -euo pipefail

namespace=controlled-friction
service=controlled-friction-webhook
secret=controlled-friction-webhook-tls
days=3650
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) namespace="$2"; shift 2 ;;
    --service) service="$2"; shift 2 ;;
    --secret) secret="$2"; shift 2 ;;
    --days) days="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
umask 077

# The API server checks the SANs; it may use any of these names for a Service reference.
sans="DNS:$service,DNS:$service.$namespace,DNS:$service.$namespace.svc,DNS:$service.$namespace.svc.cluster.local"

openssl ecparam -name prime256v1 -genkey -noout -out "$work/ca.key"
openssl req -x509 -new -key "$work/ca.key" -sha256 -days "$days" -subj "/CN=controlled-friction webhook CA" \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$work/ca.crt" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$work/tls.key"
openssl req -new -key "$work/tls.key" -subj "/CN=$service.$namespace.svc" -out "$work/tls.csr"
printf '%s\n' "subjectAltName=$sans" "basicConstraints=critical,CA:FALSE" \
  "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > "$work/ext.cnf"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
  -days "$days" -sha256 -extfile "$work/ext.cnf" -out "$work/tls.crt" 2>/dev/null

if [ -n "$out" ]; then
  mkdir -p "$out"
  cp "$work/ca.crt" "$work/tls.crt" "$work/tls.key" "$out/"
  echo "wrote $out/ca.crt, $out/tls.crt, $out/tls.key"
  exit 0
fi
"${KUBECTL:-kubectl}" -n "$namespace" create secret generic "$secret" \
  --type=kubernetes.io/tls \
  --from-file=tls.crt="$work/tls.crt" --from-file=tls.key="$work/tls.key" --from-file=ca.crt="$work/ca.crt"
