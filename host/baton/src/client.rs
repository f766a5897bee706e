//! The CLI's side of the node's HTTP API (see host/node/PROTOCOL.md).

use anyhow::{Context, bail};
use serde_json::Value;

/// Where the node is and who we are to it.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct NodeArgs {
    /// The node's management address.
    #[arg(
        long,
        env = "BATON_NODE",
        default_value = "http://127.0.0.1:7400",
        global = true
    )]
    node: String,
    /// The operator token [default: read from <data-dir>/operator-token].
    #[arg(
        long,
        env = "BATON_OPERATOR_TOKEN",
        hide_env_values = true,
        global = true
    )]
    operator_token: Option<String>,
    /// The node's data directory, where a local node keeps its operator token.
    #[arg(
        long,
        env = "BATON_DATA_DIR",
        default_value = "baton-data",
        global = true
    )]
    data_dir: std::path::PathBuf,
}

/// A blocking client for one node.
pub(crate) struct Client {
    base: String,
    operator: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub(crate) fn new(args: &NodeArgs) -> Self {
        let operator = args.operator_token.clone().or_else(|| {
            std::fs::read_to_string(args.data_dir.join("operator-token"))
                .ok()
                .map(|t| t.trim().to_owned())
        });
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        Client {
            base: args.node.trim_end_matches('/').to_owned(),
            operator,
            agent,
        }
    }

    /// The node's address, for WebSocket URLs.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    fn operator(&self) -> anyhow::Result<&str> {
        self.operator.as_deref().context(
            "no operator token: pass --operator-token, set BATON_OPERATOR_TOKEN, \
             or run where the node's data directory is (--data-dir)",
        )
    }

    /// A management call.
    pub(crate) fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Value> {
        let token = self.operator()?.to_owned();
        self.call(method, path, Some(&token), body)
    }

    /// A call with an optional bearer token (a player's, or none).
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let response = match method {
            "GET" => {
                let mut request = self.agent.get(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.call()
            }
            _ => {
                let mut request = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.send(body.unwrap_or_default())
            }
        };
        let mut response = response.with_context(|| {
            format!(
                "could not reach the node at {} (is `baton serve` running? see --node)",
                self.base
            )
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .context("reading the node's answer")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            bail!("the node answered {status}: {message}");
        }
        Ok(value)
    }

    /// Raw bytes of a GET (a module's component).
    pub(crate) fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}{path}", self.base);
        let mut response = self
            .agent
            .get(&url)
            .call()
            .with_context(|| format!("could not reach {url}"))?;
        if response.status().as_u16() >= 400 {
            bail!("the node answered {} for {path}", response.status());
        }
        response
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .context("reading the component")
    }
}
