//! Row 1, the HTTP ceiling, and the signed requests the load generators send.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use http::header::HeaderValue;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use uuid::Uuid;

use scanhook_gateway::response::{Accepted, HttpResponse, accepted};
use scanhook_gateway::server::ServerOptions;
use scanhook_gateway::signature::sign;
use scanhook_shared::Settings;

use crate::{Load, SplitMix, body, case_number, patient_id, signer};

const ROUTE_PREFIX: &str = "/v1/webhooks/scans/";

/// Serves until killed: the gateway's listener and connection settings, the body read as the
/// gateway reads it, and its 202 envelope and `X-Request-Id`; no signature, lookup or publish.
pub async fn ceiling(settings: &Settings, listen: SocketAddr) -> Result<(), String> {
    let options = ServerOptions::new(&settings.gateway);
    let max_body = settings.gateway.max_body_bytes;
    let listener =
        TcpListener::bind(listen).await.map_err(|e| format!("listen on {listen}: {e}"))?;
    println!("http-ceiling listening on {listen}");
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service_fn(move |request| async move {
            Ok::<_, Infallible>(answer(request, max_body).await)
        });
        let connection = options.http1().serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

async fn answer(request: Request<Incoming>, max_body: usize) -> HttpResponse {
    let (parts, body) = request.into_parts();
    let _ = Limited::new(body, max_body).collect().await;
    let patient = parts.uri.path().strip_prefix(ROUTE_PREFIX).unwrap_or("unknown").to_owned();
    let case = format!("BENCH-{}", patient.strip_prefix("bench-").unwrap_or(&patient));
    let data = Accepted { patient_id: &patient, case_number: &case, event_id: Uuid::now_v7() };
    let mut response = accepted(&data);
    debug_assert_eq!(response.status(), StatusCode::ACCEPTED);
    if let Ok(value) = HeaderValue::from_str(&Uuid::now_v7().to_string()) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// wrk script: each thread reads the pre-signed requests once, formats them once, and cycles
/// through them from its own starting point.
const WRK_SCRIPT: &str = r#"-- Written by scanhook-bench requests. Usage: wrk ... -s requests.lua URL -- requests.tsv
local threads = 0
function setup(thread)
  thread:set("thread_number", threads)
  threads = threads + 1
end

local requests, count, next = {}, 0, 0
function init(args)
  local file = assert(io.open(args[1], "r"))
  for line in file:lines() do
    local path, signature, body = line:match("^([^\t]+)\t([^\t]+)\t(.+)$")
    count = count + 1
    requests[count] = wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      ["X-Webhook-Signature"] = signature,
    }, body)
  end
  file:close()
  assert(count > 0, "no requests in " .. args[1])
  next = ((thread_number or 0) * 7919) % count
end

function request()
  next = next % count + 1
  return requests[next]
end
"#;

/// `requests.tsv` (path, signature, body) and `requests.lua` in `out`. Request `j` is for load
/// patient `j % patients`, so consecutive requests go to different patients; every request has
/// its own scan_id.
pub fn requests(settings: &Settings, out: &Path, load: &Load, count: usize) -> Result<(), String> {
    let (_, secret) = signer(settings)?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let patients: Vec<usize> = load.patient_numbers().collect();
    let mut ids = SplitMix::new(0x5ca9_400c);
    let mut tsv = String::with_capacity(count * 200);
    for j in 0..count.max(patients.len()) {
        let k = patients[j % patients.len()];
        let body = body(ids.scan_id());
        let signature = sign(&secret, body.as_bytes());
        let _ = writeln!(tsv, "{ROUTE_PREFIX}{}\t{signature}\t{body}", patient_id(k));
    }
    let tsv_path = out.join("requests.tsv");
    std::fs::write(&tsv_path, tsv).map_err(|e| format!("{}: {e}", tsv_path.display()))?;
    let mut urls = String::new();
    for k in &patients {
        let _ = writeln!(urls, "{ROUTE_PREFIX}{}", patient_id(*k));
    }
    let paths = out.join("paths.txt");
    std::fs::write(&paths, urls).map_err(|e| format!("{}: {e}", paths.display()))?;
    let lua_path = out.join("requests.lua");
    std::fs::write(&lua_path, WRK_SCRIPT).map_err(|e| format!("{}: {e}", lua_path.display()))?;
    println!(
        "requests={} patients={} cases={} first_patient={} last_patient={} case_of_first={}",
        count.max(patients.len()),
        patients.len(),
        load.cases,
        patient_id(patients[0]),
        patient_id(patients[patients.len() - 1]),
        case_number(patients[0]),
    );
    Ok(())
}

/// One body and its signature header value, on two lines, for a generator with one body.
pub fn one_request(settings: &Settings) -> Result<(), String> {
    let (_, secret) = signer(settings)?;
    let body = body(1);
    println!("{body}\n{}", sign(&secret, body.as_bytes()));
    Ok(())
}

/// p50, p99 and p99.9 in milliseconds (corrected for coordinated omission when oha ran with
/// `--latency-correction`), the achieved rate, and the answers by kind.
pub fn oha_summary(file: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let report: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let seconds = |pointer: &str| {
        report.pointer(pointer).and_then(serde_json::Value::as_f64).ok_or_else(|| {
            format!("{} has no figure at {pointer} (did every request fail?)", file.display())
        })
    };
    let mut accepted = 0;
    let mut other = 0;
    if let Some(codes) = report.get("statusCodeDistribution").and_then(|v| v.as_object()) {
        for (code, count) in codes {
            let count = count.as_u64().unwrap_or_default();
            if code == "202" { accepted += count } else { other += count }
        }
    }
    let errors: u64 = report
        .get("errorDistribution")
        .and_then(|v| v.as_object())
        .map(|errors| errors.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or_default();
    println!(
        "latency_p50_ms={:.2} latency_p99_ms={:.2} latency_p999_ms={:.2} achieved_per_s={:.0} accepted={accepted} other_status={other} errors={errors}",
        seconds("/latencyPercentiles/p50")? * 1000.0,
        seconds("/latencyPercentiles/p99")? * 1000.0,
        seconds("/latencyPercentiles/p99.9")? * 1000.0,
        seconds("/summary/requestsPerSec")?,
    );
    Ok(())
}
