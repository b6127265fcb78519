//! Settings of the delivery side, shared by the Scheduler, Deliverers and ResultWriter.

use std::sync::Arc;
use std::time::Duration;

use hookgate_core::ssrf::SsrfPolicy;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::limits::CircuitConfig;
use crate::proxy::{deserialize_no_proxy, EgressProxy, NoProxy};
use crate::tls::TlsRoots;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Run the delivery side on this node (scheduler, deliverers, result writer).
    pub enabled: bool,
    /// Deliverer actors, each with its own HTTP clients.
    pub deliverers: usize,
    /// Threads of the deliverers' own. 0 (the default): they run on the system arbiter with the Scheduler and the
    /// ResultWriter, so handing an attempt over, reporting its result and freeing its slot never wake another
    /// thread (ADR-0027). N: the deliverers are spread over N threads of their own, for a node whose delivery needs
    /// more than that one thread.
    pub deliverer_threads: usize,
    /// Deliveries this node attempts at once, across all destinations.
    pub max_in_flight: usize,
    /// How often the scheduler looks for due retries and expired leases without being woken.
    pub poll_interval_ms: u64,
    /// A lease lasts the destination's timeout plus this margin.
    pub lease_margin_ms: u64,
    /// The ingesting node attempts fresh deliveries at once: the writer commits them leased to it and hands them to
    /// its Scheduler, with no claim round. Off: every delivery is claimed (NOTIFY wakes the claimers).
    pub handoff: bool,
    /// Networks that outbound requests may reach although they are private (e.g. `["127.0.0.1/32"]` in tests).
    pub allow_private: Vec<ipnet::IpNet>,
    /// CA certificates every `https://` destination trusts: `webpki` (built in), `native` (the system's) or `both`.
    pub tls_roots: TlsRoots,
    /// An HTTP proxy that deliveries go through, `http://[user:password@]host[:port]` (CONNECT tunnels for
    /// `https://` destinations, absolute-form requests for `http://` ones); none when unset or empty. A secret: the
    /// URL may hold credentials. Env: `HOOKGATE_DELIVERY__PROXY`.
    pub proxy: Option<SecretString>,
    /// Destination hosts reached directly although `proxy` is set: host names, domains (`example.com` and
    /// `.example.com` match it and its subdomains), IP addresses, networks (CIDR), or `*`; a list or one
    /// comma-separated string.
    #[serde(deserialize_with = "deserialize_no_proxy")]
    pub no_proxy: Vec<String>,
    /// Results batched into one transaction at most.
    pub result_batch_max: usize,
    /// Longest a result waits for its batch, in milliseconds (two batches are written at once; a third waits).
    pub result_flush_interval_ms: u64,
    /// Longest one filter or transform may run.
    pub jq_timeout_ms: u64,
    /// Largest transform output, in bytes.
    pub jq_max_output_bytes: usize,
    /// Longest `Retry-After` honoured, in seconds.
    pub max_retry_after_secs: u64,
    /// A destination failing without a success for this long is disabled.
    pub auto_disable_after_secs: u64,
    /// Longest wait for one circuit-breaker or rate-limit script in Redis; past it this node decides alone.
    pub limits_timeout_ms: u64,
    pub circuit: CircuitConfig,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            deliverers: 2,
            deliverer_threads: 0,
            max_in_flight: 512,
            poll_interval_ms: 1_000,
            lease_margin_ms: 30_000,
            handoff: true,
            allow_private: Vec::new(),
            tls_roots: TlsRoots::default(),
            proxy: None,
            no_proxy: Vec::new(),
            result_batch_max: 256,
            result_flush_interval_ms: 1,
            jq_timeout_ms: 100,
            jq_max_output_bytes: 1024 * 1024,
            max_retry_after_secs: 3_600,
            auto_disable_after_secs: 5 * 24 * 3_600,
            limits_timeout_ms: 2_000,
            circuit: CircuitConfig::default(),
        }
    }
}

impl DeliveryConfig {
    pub fn ssrf_policy(&self) -> SsrfPolicy {
        SsrfPolicy::new(self.allow_private.clone())
    }

    /// The egress proxy with its `no_proxy` list, checked; `None` when `proxy` is unset or empty. Errors name the
    /// setting at fault and never repeat the proxy URL.
    pub fn egress_proxy(&self) -> anyhow::Result<Option<Arc<EgressProxy>>> {
        let no_proxy = NoProxy::parse(&self.no_proxy).map_err(anyhow::Error::msg)?;
        let Some(url) = self.proxy.as_ref().map(|p| p.expose_secret().trim()).filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        Ok(Some(Arc::new(EgressProxy::parse(url, no_proxy).map_err(anyhow::Error::msg)?)))
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_is_a_secret_and_an_empty_one_is_none() {
        let mut cfg = DeliveryConfig {
            proxy: Some(SecretString::from("http://hookgate:hunter2@proxy.internal:3128")),
            no_proxy: vec![".internal".into()],
            ..Default::default()
        };
        assert!(!format!("{cfg:?}").contains("hunter2"));
        let proxy = cfg.egress_proxy().unwrap().unwrap();
        assert_eq!(proxy.address(), "proxy.internal:3128");
        assert!(!proxy.applies_to("api.internal") && proxy.applies_to("hooks.example.com"));
        cfg.proxy = Some(SecretString::from(" "));
        assert!(cfg.egress_proxy().unwrap().is_none());
        cfg.no_proxy = vec!["bad entry".into()];
        assert!(cfg.egress_proxy().unwrap_err().to_string().contains("\"bad entry\""));
    }
}
