"""The only module that talks to Prometheus: runs instant queries and returns numbers or failures.

It decides nothing: `measurement` says what to ask and what the answers mean, the planner judges.
Every request has a timeout, and only connection errors and timeouts are retried (twice in all, short
backoff), so a dead Prometheus costs a measurement round well under a second and a hung one at most
two timeouts. Failures never escape `run`: they are `QueryFailure`s, which the planner turns into
`error` verdicts, counted apart from failures (Prometheus being down is no evidence against a canary).
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential
from urllib3.util.retry import Retry

from controlled_friction.measurement import GROUP_LABELS, Answer, IndexedTable, Query, QueryFailure, Table

_TRANSIENT = (requests.ConnectionError, requests.Timeout)
_UNAVAILABLE_STATUS = {502, 503, 504}  # 503: Prometheus starting or stopping; 502/504: a proxy in front


class PrometheusUnavailable(Exception):
    """Prometheus could not be reached or is not ready."""


class PrometheusQueryError(Exception):
    """Prometheus answered, but rejected the query or did not return a number."""


class PrometheusClient:
    def __init__(self, url: str, timeout: float = 5.0, attempts: int = 2) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        # urllib3's own retries are off (total=0): tenacity below is the one bounded retry policy.
        self._conn = PrometheusConnect(url=self.url, retry=Retry(total=0), timeout=timeout)
        self._query = retry(
            retry=retry_if_exception_type(_TRANSIENT),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=0.1, max=0.5),
            reraise=True,
        )(self._conn.custom_query)

    def instant(self, query: str, at: datetime | None = None) -> float | None:
        """One number: the sum of the returned series; None when the result is empty or NaN.
        `at`: the instant to evaluate at (default: Prometheus's now)."""
        return _number(self._raw(query, at))

    def table(self, query: str, at: datetime | None = None) -> Table:
        """Finite values of the returned series by GROUP_LABELS (a `sum by (...)` query)."""
        result = self._raw(query, at)
        if not isinstance(result, list):
            raise PrometheusQueryError(f"unexpected query result: {str(result)[:200]}")
        out: Table = {}
        for series in result:
            if not isinstance(series, dict) or "value" not in series:
                raise PrometheusQueryError("query did not return an instant vector")
            labels = series.get("metric") or {}
            ns, service, track, revision = (str(labels.get(k, "")) for k in GROUP_LABELS)
            key = (ns, service, track, revision)
            value = _float(series["value"][1])
            if math.isfinite(value):
                out[key] = out.get(key, 0.0) + value
        return IndexedTable(out)

    def run(self, queries: Mapping[str, Query], at: datetime | None = None) -> dict[str, Answer]:
        """Every query's answer at `at` (default: now); once Prometheus is unreachable the rest fail
        without another timeout."""
        out: dict[str, Answer] = {}
        down: QueryFailure | None = None
        for key, q in queries.items():
            if down is not None:
                out[key] = down
                continue
            try:
                out[key] = self.table(q.promql, at) if q.grouped else self.instant(q.promql, at)
            except PrometheusUnavailable as err:
                down = QueryFailure(str(err), unavailable=True)
                out[key] = down
            except PrometheusQueryError as err:
                out[key] = QueryFailure(str(err), unavailable=False)
        return out

    def _raw(self, query: str, at: datetime | None = None) -> Any:
        try:
            result = self._query(query, params=None if at is None else {"time": f"{at.timestamp():.3f}"})
        except _TRANSIENT as err:
            raise PrometheusUnavailable(f"Prometheus at {self.url} is unreachable: {_short(err)}") from err
        except PrometheusApiClientException as err:
            status, detail = _http_error(str(err))
            if status in _UNAVAILABLE_STATUS:
                raise PrometheusUnavailable(f"Prometheus at {self.url} answered {status}: {detail}") from err
            raise PrometheusQueryError(f"Prometheus rejected the query ({status}): {detail}") from err
        except (ValueError, KeyError, TypeError) as err:  # not JSON, or not the Prometheus API's shape
            raise PrometheusQueryError(f"{self.url} did not answer like a Prometheus API: {err}") from err
        return result

    def series(self, query: str, start: datetime, end: datetime, step: float) -> list[tuple[float, float]]:
        """A range query: (unix time, value) points, summed over the returned series; NaN/±Inf
        points are left out. Errors are raised like `instant`'s (for the dashboard's plots)."""
        try:
            result = self._conn.custom_query_range(query, start_time=start, end_time=end, step=f"{step:g}s")
        except _TRANSIENT as err:
            raise PrometheusUnavailable(f"Prometheus at {self.url} is unreachable: {_short(err)}") from err
        except PrometheusApiClientException as err:
            status, detail = _http_error(str(err))
            if status in _UNAVAILABLE_STATUS:
                raise PrometheusUnavailable(f"Prometheus at {self.url} answered {status}: {detail}") from err
            raise PrometheusQueryError(f"Prometheus rejected the query ({status}): {detail}") from err
        except (ValueError, KeyError, TypeError) as err:
            raise PrometheusQueryError(f"{self.url} did not answer like a Prometheus API: {err}") from err
        points: dict[float, float] = {}
        for item in result if isinstance(result, list) else []:
            for t, text in item.get("values", []) if isinstance(item, dict) else []:
                value = _float(text)
                if math.isfinite(value):
                    points[float(t)] = points.get(float(t), 0.0) + value
        return sorted(points.items())


def _number(result: Any) -> float | None:
    if not isinstance(result, list):
        raise PrometheusQueryError(f"unexpected query result: {str(result)[:200]}")
    if len(result) == 2 and not isinstance(result[0], dict):  # scalar: [time, "value"]
        values = [_float(result[1])]
    else:
        values = []
        for series in result:
            if "value" not in series:
                raise PrometheusQueryError("query returned a range vector; an instant query needs a number")
            values.append(_float(series["value"][1]))
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) if finite else None


def _float(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError) as err:
        raise PrometheusQueryError(f"query returned {text!r}, not a number") from err


def _http_error(message: str) -> tuple[int | None, str]:
    """Status and Prometheus's own error text from prometheus-api-client's exception message,
    which reads `HTTP Status Code 400 (b'{"status":"error",...,"error":"..."}')`."""
    status = re.search(r"HTTP Status Code (\d+)", message)
    text = message
    body = re.search(r"\((b'.*'|b\".*\")\)\s*$", message, re.DOTALL)
    if body:
        with contextlib.suppress(ValueError, SyntaxError, TypeError, KeyError):
            text = str(json.loads(ast.literal_eval(body.group(1)))["error"])
    return (int(status.group(1)) if status else None), text[:300]


def _short(err: Exception) -> str:
    # urllib3 nests the root cause deep inside; the innermost reason is what a person needs.
    text = str(err)
    reason = re.search(r"(Connection refused|timed out|Name or service not known|Connection reset)", text)
    return reason.group(1) if reason else text[:200]
