//! The optional TOML file (`--config` / `PODGATE_CONFIG`): read once and merged under what flags
//! and environment set, setting by setting.

use crate::config::{bad, ConfigError, Settings};

impl Settings {
    /// Reads the TOML file named by `--config` (if any) and fills in what flags and environment
    /// left unset.
    pub fn with_file(self) -> Result<Settings, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            bad(format!(
                "cannot read the config file {}: {e}; check the path given to --config / PODGATE_CONFIG",
                path.display()
            ))
        })?;
        let file: Settings = toml::from_str(&text).map_err(|e| {
            bad(format!(
                "the config file {} is not valid: {e}; keys are the long flag names in snake_case, e.g. database_url = \"sqlite://podgate.db\"",
                path.display()
            ))
        })?;
        Ok(self.or(file))
    }

    fn or(self, o: Settings) -> Settings {
        Settings {
            config: self.config,
            listen: self.listen.or(o.listen),
            metrics_listen: self.metrics_listen.or(o.metrics_listen),
            database_url: self.database_url.or(o.database_url),
            database_max_connections: self.database_max_connections.or(o.database_max_connections),
            admin_token: self.admin_token.or(o.admin_token),
            renew_secret: self.renew_secret.or(o.renew_secret),
            dev_mode: self.dev_mode.or(o.dev_mode),
            issuer: self.issuer.or(o.issuer),
            public_scheme: self.public_scheme.or(o.public_scheme),
            domain: self.domain.or(o.domain),
            host_template: self.host_template.or(o.host_template),
            upstream_host_template: self.upstream_host_template.or(o.upstream_host_template),
            service_host_template: self.service_host_template.or(o.service_host_template),
            pod_public_port: self.pod_public_port.or(o.pod_public_port),
            login_url: self.login_url.or(o.login_url),
            capability_lifetime_secs: self.capability_lifetime_secs.or(o.capability_lifetime_secs),
            assertion_lifetime_secs: self.assertion_lifetime_secs.or(o.assertion_lifetime_secs),
            ticket_lifetime_secs: self.ticket_lifetime_secs.or(o.ticket_lifetime_secs),
            session_lifetime_secs: self.session_lifetime_secs.or(o.session_lifetime_secs),
            cookie_samesite: self.cookie_samesite.or(o.cookie_samesite),
            signing_alg: self.signing_alg.or(o.signing_alg),
            key_overlap_secs: self.key_overlap_secs.or(o.key_overlap_secs),
            key_encryption_key_file: self.key_encryption_key_file.or(o.key_encryption_key_file),
            key_encryption_key: self.key_encryption_key.or(o.key_encryption_key),
            previous_key_encryption_key_file: self
                .previous_key_encryption_key_file
                .or(o.previous_key_encryption_key_file),
            previous_key_encryption_key: self
                .previous_key_encryption_key
                .or(o.previous_key_encryption_key),
            log_format: self.log_format.or(o.log_format),
            oidc: if self.oidc.is_empty() {
                o.oidc
            } else {
                self.oidc
            },
            firebase_project: self.firebase_project.or(o.firebase_project),
            oidc_issuer: self.oidc_issuer.or(o.oidc_issuer),
            oidc_audience: self.oidc_audience.or(o.oidc_audience),
            oidc_client_secret: self.oidc_client_secret.or(o.oidc_client_secret),
            oidc_client_secret_file: self.oidc_client_secret_file.or(o.oidc_client_secret_file),
            oidc_client_key_file: self.oidc_client_key_file.or(o.oidc_client_key_file),
            oidc_client_auth: self.oidc_client_auth.or(o.oidc_client_auth),
            oidc_scopes: self.oidc_scopes.or(o.oidc_scopes),
            oidc_display_name: self.oidc_display_name.or(o.oidc_display_name),
            app_session: self.app_session.or(o.app_session),
            cors_origins: self.cors_origins.or(o.cors_origins),
            client_ip_header: self.client_ip_header.or(o.client_ip_header),
            start_hook_url: self.start_hook_url.or(o.start_hook_url),
            start_hook_secret: self.start_hook_secret.or(o.start_hook_secret),
            start_hook_interval_secs: self.start_hook_interval_secs.or(o.start_hook_interval_secs),
            edge_rate_per_user: self.edge_rate_per_user.or(o.edge_rate_per_user),
            edge_rate_per_pod: self.edge_rate_per_pod.or(o.edge_rate_per_pod),
            edge_concurrent_per_user: self.edge_concurrent_per_user.or(o.edge_concurrent_per_user),
            edge_concurrent_per_pod: self.edge_concurrent_per_pod.or(o.edge_concurrent_per_pod),
            xds_listen: self.xds_listen.or(o.xds_listen),
            envoy_tls_cert: self.envoy_tls_cert.or(o.envoy_tls_cert),
            envoy_tls_key: self.envoy_tls_key.or(o.envoy_tls_key),
            envoy_client_ca: self.envoy_client_ca.or(o.envoy_client_ca),
            envoy_listen: self.envoy_listen.or(o.envoy_listen),
            filter_wasm: self.filter_wasm.or(o.filter_wasm),
            cli_dir: self.cli_dir.or(o.cli_dir),
            key_publish_delay_secs: self.key_publish_delay_secs.or(o.key_publish_delay_secs),
            assertion_key_delay_secs: self.assertion_key_delay_secs.or(o.assertion_key_delay_secs),
            xds_resync_secs: self.xds_resync_secs.or(o.xds_resync_secs),
            proxy_auth_burst: self.proxy_auth_burst.or(o.proxy_auth_burst),
            proxy_auth_per_minute: self.proxy_auth_per_minute.or(o.proxy_auth_per_minute),
            callback_failures_burst: self.callback_failures_burst.or(o.callback_failures_burst),
            callback_failures_per_minute: self
                .callback_failures_per_minute
                .or(o.callback_failures_per_minute),
            capability_failures_burst: self
                .capability_failures_burst
                .or(o.capability_failures_burst),
            capability_failures_per_minute: self
                .capability_failures_per_minute
                .or(o.capability_failures_per_minute),
            api_token_failures_burst: self.api_token_failures_burst.or(o.api_token_failures_burst),
            api_token_failures_per_minute: self
                .api_token_failures_per_minute
                .or(o.api_token_failures_per_minute),
            admin_failures_burst: self.admin_failures_burst.or(o.admin_failures_burst),
            admin_failures_per_minute: self
                .admin_failures_per_minute
                .or(o.admin_failures_per_minute),
            rate_limit_clients: self.rate_limit_clients.or(o.rate_limit_clients),
            max_body_bytes: self.max_body_bytes.or(o.max_body_bytes),
            max_header_bytes: self.max_header_bytes.or(o.max_header_bytes),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::Need;

    #[test]
    fn the_config_file_names_the_keys_like_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let (current, previous) = (dir.path().join("new"), dir.path().join("old"));
        let (new, old) = (
            crate::key_encryption::KeyEncryptionKey::generate().unwrap(),
            crate::key_encryption::KeyEncryptionKey::generate().unwrap(),
        );
        crate::key_encryption::write_new_key_file(&current, &new).unwrap();
        crate::key_encryption::write_new_key_file(&previous, &old).unwrap();
        let toml = dir.path().join("podgate.toml");
        std::fs::write(
            &toml,
            format!(
                "admin_token = \"0123456789abcdef0123456789abcdef\"\nlogin_url = \"https://app.example.dev/login\"\nxds_listen = \"off\"\nkey_encryption_key_file = {:?}\nprevious_key_encryption_key_file = [{:?}]\n",
                current.display().to_string(),
                previous.display().to_string()
            ),
        )
        .unwrap();
        let config = Settings {
            config: Some(toml),
            ..Default::default()
        }
        .with_file()
        .unwrap()
        .resolve(Need::Server)
        .unwrap();
        let kek = &config.key_encryption;
        assert_eq!(kek.current().unwrap().id(), new.id());
        assert_eq!(kek.current().unwrap().file(), Some(current.as_path()));
        assert_eq!(kek.previous().len(), 1);
        assert_eq!(kek.previous()[0].id(), old.id());
        assert!(!config.dev_mode);
    }

    #[test]
    fn edge_limits_come_from_the_file_under_a_flag() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("podgate.toml");
        std::fs::write(
            &toml,
            "admin_token = \"0123456789abcdef0123456789abcdef\"\ndev_mode = true\nxds_listen = \"off\"\nedge_concurrent_per_user = 7\nedge_concurrent_per_pod = 70\n",
        )
        .unwrap();
        let config = Settings {
            config: Some(toml),
            edge_concurrent_per_pod: Some(9),
            ..Default::default()
        }
        .with_file()
        .unwrap()
        .resolve(Need::Server)
        .unwrap();
        let limits = config.edge_concurrency.unwrap();
        assert_eq!((limits.per_user, limits.per_pod), (Some(7), Some(9)));
    }

    #[test]
    fn file_fills_what_flags_and_env_left_unset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("podgate.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9999\"\ndomain = \"example.dev\"\ndev_mode = true\nadmin_token = \"0123456789abcdef0123456789abcdef\"\nxds_listen = \"off\"\n",
        )
        .unwrap();
        let s = Settings {
            config: Some(path.clone()),
            domain: Some("flag.dev".into()),
            ..Settings::default()
        }
        .with_file()
        .unwrap();
        let c = s.resolve(Need::Server).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(c.domain, "flag.dev");
        std::fs::write(&path, "lisen = 1\n").unwrap();
        let e = Settings {
            config: Some(path),
            ..Settings::default()
        }
        .with_file()
        .unwrap_err()
        .to_string();
        assert!(e.contains("not valid") && e.contains("lisen"), "{e}");
        let e = Settings {
            config: Some("/nonexistent/p.toml".into()),
            ..Settings::default()
        }
        .with_file()
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }
}
