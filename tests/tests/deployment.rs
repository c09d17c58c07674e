//! The deployment files, checked without a container engine: docker-compose.yml and the
//! Dockerfiles parse and name only files that exist; the Asterisk configuration is valid
//! PJSIP and dialplan; the gateways' configuration in the compose file loads with
//! `dialtone --check-config`; Kamailio and nginx accept their configurations; the files agree
//! on the addresses they share; the Grafana dashboard asks for metrics the gateway exports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context};
use dialtone_tests::asterisk_conf::{self, pattern_matches, Section};
use dialtone_tests::deploy::{repo_path, repo_text, yaml_file};
use dialtone_tests::gateway::{binary_path, Gateway, LOOPBACK};
use dialtone_tests::kamailio::KAMAILIO_BIN;
use dialtone_tests::nginx::Nginx;
use serde_json::Value;

fn compose() -> anyhow::Result<Value> {
    yaml_file(&repo_path("docker-compose.yml"))
}

fn services(compose: &Value) -> anyhow::Result<&serde_json::Map<String, Value>> {
    compose["services"]
        .as_object()
        .context("docker-compose.yml has no services")
}

/// A service's build context and Dockerfile, when it builds an image.
fn build_of(service: &Value) -> Option<(PathBuf, PathBuf)> {
    let (context, dockerfile) = match &service["build"] {
        Value::String(context) => (context.as_str(), "Dockerfile"),
        Value::Object(build) => (
            build.get("context")?.as_str()?,
            build
                .get("dockerfile")
                .and_then(Value::as_str)
                .unwrap_or("Dockerfile"),
        ),
        _ => return None,
    };
    let context = repo_path(context);
    let dockerfile = context.join(dockerfile);
    Some((context, dockerfile))
}

/// `environment:` as a list of `NAME=VALUE` (a bare `NAME` passes the shell's value through:
/// left out, as when it is unset).
fn environment_of(service: &Value) -> Vec<(String, String)> {
    let items = service["environment"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    items
        .iter()
        .filter_map(|item| item.as_str()?.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// The host file a container path is mounted from (`./host:/container[:ro]`).
fn host_path_of(service: &Value, container_path: &str) -> Option<PathBuf> {
    service["volumes"].as_array()?.iter().find_map(|volume| {
        let mut parts = volume.as_str()?.split(':');
        let (host, container) = (parts.next()?, parts.next()?);
        (container == container_path).then(|| repo_path(host))
    })
}

#[test]
fn compose_file_parses_and_names_only_files_that_exist() -> anyhow::Result<()> {
    let compose = compose()?;
    let services = services(&compose)?;
    for (name, service) in services {
        ensure!(
            service.get("image").is_some() || service.get("build").is_some(),
            "{name}: neither image nor build"
        );
        if let Some((context, dockerfile)) = build_of(service) {
            ensure!(
                context.is_dir(),
                "{name}: no build context {}",
                context.display()
            );
            ensure!(dockerfile.is_file(), "{name}: no {}", dockerfile.display());
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let volume = volume.as_str().context("long volume syntax is not used")?;
            let host = volume.split(':').next().unwrap_or_default();
            ensure!(
                host.starts_with("./"),
                "{name}: volume {volume} is not from the repository"
            );
            ensure!(repo_path(host).exists(), "{name}: {host} does not exist");
        }
        for dependency in service["depends_on"].as_array().into_iter().flatten() {
            let dependency = dependency.as_str().unwrap_or_default();
            ensure!(
                services.contains_key(dependency),
                "{name}: depends on unknown {dependency}"
            );
        }
    }
    let in_profile = |profile: &str| -> Vec<&str> {
        services
            .iter()
            .filter(|(_, s)| match s["profiles"].as_array() {
                Some(profiles) => profiles.iter().any(|p| p == profile),
                None => profile.is_empty(),
            })
            .map(|(name, _)| name.as_str())
            .collect()
    };
    ensure!(
        in_profile("") == ["asterisk", "dialtone"],
        "default: {:?}",
        in_profile("")
    );
    let scale = in_profile("scale");
    for wanted in [
        "kamailio",
        "dialtone-a",
        "dialtone-b",
        "nginx",
        "prometheus",
        "grafana",
    ] {
        ensure!(
            scale.contains(&wanted),
            "profile scale lacks {wanted}: {scale:?}"
        );
    }
    Ok(())
}

/// One instruction of a Dockerfile: keyword and arguments (continuations joined).
fn dockerfile_instructions(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    const KEYWORDS: &[&str] = &[
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
    ];
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (keyword, arguments) = pending.split_once(' ').unwrap_or((&pending, ""));
        ensure!(
            KEYWORDS.contains(&keyword),
            "unknown instruction {keyword:?}"
        );
        instructions.push((keyword.to_string(), arguments.trim().to_string()));
        pending.clear();
    }
    ensure!(pending.is_empty(), "the file ends in a continuation");
    Ok(instructions)
}

/// Checks one Dockerfile against its context; returns its instructions.
fn check_dockerfile(context: &Path, dockerfile: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(dockerfile)?;
    let instructions = dockerfile_instructions(&text)?;
    let first = instructions.iter().find(|(k, _)| k != "ARG");
    ensure!(
        first.is_some_and(|(k, _)| k == "FROM"),
        "does not start with FROM"
    );
    let ignored: Vec<String> = std::fs::read_to_string(context.join(".dockerignore"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let mut stages = Vec::new();
    for (keyword, arguments) in &instructions {
        let at = || format!("{keyword} {arguments}");
        match keyword.as_str() {
            "FROM" => {
                if let Some((_, stage)) = arguments.split_once(" AS ") {
                    stages.push(stage.trim().to_string());
                }
            }
            "COPY" | "ADD" => {
                let mut words: Vec<&str> = arguments.split_whitespace().collect();
                let from_stage = words
                    .iter()
                    .find_map(|w| w.strip_prefix("--from="))
                    .map(str::to_string);
                words.retain(|w| !w.starts_with("--"));
                ensure!(words.len() >= 2, "{}: no source or destination", at());
                if let Some(stage) = from_stage {
                    ensure!(
                        stages.contains(&stage),
                        "{}: no stage {stage:?} before",
                        at()
                    );
                    continue;
                }
                for source in &words[..words.len() - 1] {
                    if *source == "." {
                        continue;
                    }
                    ensure!(
                        context.join(source).exists(),
                        "{}: {source} does not exist",
                        at()
                    );
                    ensure!(
                        !ignored.iter().any(|i| source.starts_with(i.as_str())),
                        "{}: {source} is in .dockerignore",
                        at()
                    );
                }
            }
            "CMD" | "ENTRYPOINT" if arguments.starts_with('[') => {
                let words: Vec<String> = serde_json::from_str(arguments)
                    .with_context(|| format!("{}: not a JSON array of strings", at()))?;
                ensure!(!words.is_empty(), "{}: empty", at());
            }
            "EXPOSE" => {
                for port in arguments.split_whitespace() {
                    let number = port.split('/').next().unwrap_or_default();
                    ensure!(
                        number.split('-').all(|p| p.parse::<u16>().is_ok()),
                        "{}: bad port {port}",
                        at()
                    );
                }
            }
            _ => {}
        }
    }
    Ok(instructions)
}

#[test]
fn dockerfiles_parse_and_copy_only_files_that_exist() -> anyhow::Result<()> {
    let compose = compose()?;
    let mut checked = Vec::new();
    for (name, service) in services(&compose)? {
        let Some((context, dockerfile)) = build_of(service) else {
            continue;
        };
        if checked.contains(&dockerfile) {
            continue;
        }
        let instructions = check_dockerfile(&context, &dockerfile)
            .with_context(|| format!("{name}: {}", dockerfile.display()))?;
        let has = |keyword: &str| instructions.iter().any(|(k, _)| k == keyword);
        ensure!(has("CMD") || has("ENTRYPOINT"), "{name}: nothing to run");
        checked.push(dockerfile);
    }
    // The gateway's image: built in one stage, run unprivileged in another, health-checked.
    let gateway = check_dockerfile(&repo_path("."), &repo_path("Dockerfile"))?;
    let froms = gateway.iter().filter(|(k, _)| k == "FROM").count();
    ensure!(froms == 2, "a build and a runtime stage, not {froms}");
    let value = |keyword: &str| {
        gateway
            .iter()
            .rev()
            .find(|(k, _)| k == keyword)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    ensure!(
        !value("USER").is_empty() && value("USER") != "root",
        "runs as root"
    );
    ensure!(
        value("HEALTHCHECK").contains("/health"),
        "{}",
        value("HEALTHCHECK")
    );
    ensure!(
        checked.len() >= 3,
        "gateway, Asterisk and Kamailio images: {checked:?}"
    );
    Ok(())
}

fn asterisk_file(name: &str) -> anyhow::Result<Vec<Section>> {
    asterisk_conf::parse(&repo_text(&format!("deploy/asterisk/{name}"))?)
        .with_context(|| format!("deploy/asterisk/{name}"))
}

#[test]
fn asterisk_configuration_is_valid_pjsip_and_dialplan() -> anyhow::Result<()> {
    let dockerfile = repo_text("deploy/asterisk/Dockerfile")?;
    for entry in std::fs::read_dir(repo_path("deploy/asterisk"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".conf") {
            asterisk_file(&name)?;
            ensure!(dockerfile.contains(&name), "the image does not copy {name}");
        }
    }
    let pjsip = asterisk_conf::check_pjsip(&asterisk_file("pjsip.conf")?)?;
    let dialplan = asterisk_conf::check_dialplan(&asterisk_file("extensions.conf")?)?;

    let endpoints: Vec<&Section> = pjsip.of_type("endpoint").collect();
    ensure!(
        endpoints.len() >= 2,
        "users to call each other: {}",
        endpoints.len()
    );
    for endpoint in &endpoints {
        let at = format!("endpoint {}", endpoint.name);
        // The gateway bridges the media and may sit behind NAT.
        for (key, wanted) in [
            ("direct_media", "no"),
            ("rtp_symmetric", "yes"),
            ("force_rport", "yes"),
            ("rewrite_contact", "yes"),
        ] {
            ensure!(
                endpoint.get(key) == Some(wanted),
                "{at}: {key} should be {wanted}"
            );
        }
        ensure!(
            endpoint.get("auth").is_some(),
            "{at}: users register with a password"
        );
        let context = endpoint.get("context").unwrap_or("default");
        let extensions = dialplan
            .get(context)
            .with_context(|| format!("{at}: no dialplan context {context}"))?;
        // Every user can be called: an extension of its name dials it.
        let dials_it = extensions.iter().any(|e| {
            pattern_matches(&e.pattern, &endpoint.name)
                && e.steps
                    .iter()
                    .any(|(_, app, args)| app == "Dial" && args.starts_with("PJSIP/"))
        });
        ensure!(dials_it, "{at}: no extension dials it");
        // The services users call.
        for (number, application) in [
            ("600", "Echo"),
            ("700", "SayDigits"),
            ("700", "Read"),
            ("800", "Playback"),
        ] {
            let found = extensions.iter().any(|e| {
                pattern_matches(&e.pattern, number)
                    && e.steps.iter().any(|(_, app, _)| app == application)
            });
            ensure!(found, "{at}: {number} does not run {application}");
        }
    }
    for mode in ["rfc4733", "info"] {
        ensure!(
            endpoints.iter().any(|e| e.get("dtmf_mode") == Some(mode)),
            "no endpoint with dtmf_mode = {mode}"
        );
    }

    // The gateway of the compose file registers where Asterisk listens, and Kamailio knows the
    // same users with the same passwords.
    let gateway_toml = repo_text("deploy/dialtone/dialtone.toml")?;
    let udp = pjsip
        .of_type("transport")
        .find(|t| t.get("protocol") == Some("udp"))
        .context("no UDP transport")?;
    let bind = udp.get("bind").unwrap_or_default();
    ensure!(
        gateway_toml.contains(&format!("address = \"sip:{bind};transport=udp\"")),
        "the gateway does not register at {bind}"
    );
    let kamailio_users = repo_text("deploy/kamailio/users.cfg")?;
    for auth in pjsip.of_type("auth") {
        let (user, password) = (
            auth.get("username").unwrap_or_default(),
            auth.get("password").unwrap_or_default(),
        );
        ensure!(
            kamailio_users.contains(&format!("$sht(users=>{user}) = \"{password}\";")),
            "Kamailio's users.cfg lacks {user} with the password of pjsip.conf"
        );
    }
    Ok(())
}

/// Runs `dialtone --check-config` with only `env` among the DIALTONE_* variables.
fn check_config(config: &Path, env: &[(String, String)]) -> anyhow::Result<(bool, String)> {
    let mut command = Command::new(binary_path()?);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("DIALTONE_")) {
        command.env_remove(name);
    }
    let output = command
        .arg("--check-config")
        .arg("--config")
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .context("running dialtone --check-config")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

#[test]
fn gateway_configs_in_the_compose_file_load_with_check_config() -> anyhow::Result<()> {
    let compose = compose()?;
    let mut summaries = BTreeMap::new();
    for (name, service) in services(&compose)? {
        let builds_gateway =
            build_of(service).is_some_and(|(context, _)| context == repo_path("."));
        if !builds_gateway {
            continue;
        }
        let command: Vec<&str> = service["command"]
            .as_array()
            .context("gateway without command")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let config = command
            .windows(2)
            .find(|pair| pair[0] == "--config")
            .map(|pair| pair[1])
            .with_context(|| format!("{name}: no --config"))?;
        let host_config = host_path_of(service, config)
            .with_context(|| format!("{name}: {config} is not mounted from the repository"))?;
        let (ok, output) = check_config(&host_config, &environment_of(service))?;
        ensure!(ok && output.starts_with("config ok"), "{name}: {output}");
        summaries.insert(name.clone(), output);
    }
    ensure!(summaries.len() == 3, "three gateways: {summaries:?}");
    ensure!(
        summaries["dialtone"].contains("registrar sip:127.0.0.1:5060"),
        "{summaries:?}"
    );
    for scaled in ["dialtone-a", "dialtone-b"] {
        ensure!(
            summaries[scaled].contains("registrar sip:127.0.0.1:5070"),
            "{summaries:?}"
        );
    }

    // And a mistake is reported, with a failing exit status.
    let dir = tempfile::tempdir()?;
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[http]\nlisten = \"nowhere\"\n")?;
    let (ok, output) = check_config(&broken, &[])?;
    ensure!(!ok && output.contains("invalid config file"), "{output}");
    Ok(())
}

#[test]
fn kamailio_accepts_its_configuration() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let run = dir.path().to_str().context("temp dir path")?;
    let output = Command::new(KAMAILIO_BIN)
        .arg("-c")
        .arg("-f")
        .arg(repo_path("deploy/kamailio/kamailio.cfg"))
        .args([
            "-A",
            &format!(
                "DISPATCHER_LIST=\"{}\"",
                repo_path("deploy/kamailio/dispatcher.list").display()
            ),
        ])
        .args([
            "-A",
            &format!("RPC_FIFO=\"{run}/rpc.fifo\""),
            "-A",
            &format!("RPC_REPLY_DIR=\"{run}/\""),
        ])
        .args(["-A", &format!("CTL_SOCKET=\"unix:{run}/ctl\"")])
        .current_dir(repo_path("deploy/kamailio"))
        .output()
        .context("running kamailio -c (apt-get install kamailio)")?;
    let log = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success() && log.contains("config file ok"),
        "{log}"
    );
    Ok(())
}

#[test]
fn nginx_accepts_its_configuration() -> anyhow::Result<()> {
    Nginx::check(&repo_text("deploy/nginx/dialtone.conf")?)
}

/// `127.0.0.1:PORT` addresses in `text` after `prefix`.
fn addresses_after(text: &str, prefix: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix(prefix))
        .filter_map(|rest| rest.split([' ', ';']).next())
        .filter(|word| word.parse::<std::net::SocketAddr>().is_ok())
        .map(str::to_string)
        .collect()
}

#[test]
fn balancer_registrar_and_prometheus_agree_on_the_addresses() -> anyhow::Result<()> {
    let compose = compose()?;
    let services = services(&compose)?;
    let scaled_http: Vec<String> = ["dialtone-a", "dialtone-b"]
        .iter()
        .map(|name| {
            environment_of(&services[*name])
                .into_iter()
                .find(|(k, _)| k == "DIALTONE_HTTP_LISTEN")
                .map(|(_, v)| v)
                .unwrap_or_default()
        })
        .collect();
    let upstreams = addresses_after(&repo_text("deploy/nginx/dialtone.conf")?, "server ");
    ensure!(
        upstreams == scaled_http,
        "nginx {upstreams:?} vs gateways {scaled_http:?}"
    );
    let prometheus = yaml_file(&repo_path("deploy/prometheus/prometheus.yml"))?;
    let targets: Vec<String> = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_array()
        .context("no targets")?
        .iter()
        .filter_map(|t| Some(t.as_str()?.to_string()))
        .collect();
    ensure!(
        targets == scaled_http,
        "prometheus {targets:?} vs gateways {scaled_http:?}"
    );
    // Kamailio's defaults are where the scaled gateways register, and its dispatcher sends
    // to where Asterisk listens.
    let kamailio = repo_text("deploy/kamailio/kamailio.cfg")?;
    ensure!(
        kamailio.contains("#!define SIP_PORT 5070"),
        "Kamailio's default port moved"
    );
    let dispatcher = repo_text("deploy/kamailio/dispatcher.list")?;
    ensure!(
        dispatcher.lines().any(|l| l == "1 sip:127.0.0.1:5060"),
        "{dispatcher}"
    );
    Ok(())
}

#[test]
fn grafana_dashboard_asks_for_metrics_the_gateway_exports() -> anyhow::Result<()> {
    let dashboard: Value =
        serde_json::from_str(&repo_text("deploy/grafana/dashboards/dialtone.json")?)?;
    let gateway = Gateway::start(LOOPBACK)?;
    let metrics = gateway.metrics_text()?;
    let mut asked = 0;
    for panel in dashboard["panels"].as_array().context("no panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("dialtone_"))
            {
                ensure!(
                    metrics.contains(&format!("\n{name}")),
                    "{name} is not exported:\n{metrics}"
                );
                asked += 1;
            }
        }
    }
    ensure!(asked > 0, "the dashboard asks for nothing");
    let provisioning = yaml_file(&repo_path(
        "deploy/grafana/provisioning/dashboards/dialtone.yml",
    ))?;
    let path = provisioning["providers"][0]["options"]["path"]
        .as_str()
        .unwrap_or_default();
    let compose = compose()?;
    ensure!(
        host_path_of(&services(&compose)?["grafana"], path)
            == Some(repo_path("./deploy/grafana/dashboards")),
        "Grafana reads dashboards from {path}, which compose does not mount"
    );
    Ok(())
}

#[test]
fn systemd_unit_and_package_agree_on_paths() -> anyhow::Result<()> {
    let unit = repo_text("deploy/systemd/dialtone.service")?;
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .context("no ExecStart")?;
    let output = Command::new("/usr/bin/python3")
        .args(["-c", "import json, sys, tomllib; print(json.dumps(tomllib.load(open(sys.argv[1], 'rb'))['package']['metadata']['deb']))"])
        .arg(repo_path("gateway/Cargo.toml"))
        .output()?;
    if !output.status.success() {
        bail!(
            "gateway/Cargo.toml: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let deb: Value = serde_json::from_slice(&output.stdout)?;
    let installed: Vec<String> = deb["assets"]
        .as_array()
        .context("no assets")?
        .iter()
        .filter_map(|a| {
            let (source, destination) = (a[0].as_str()?, a[1].as_str()?);
            let source_ok =
                source.starts_with("target/") || repo_path("gateway").join(source).exists();
            source_ok.then(|| match destination.strip_suffix('/') {
                Some(dir) => format!("/{dir}/{}", source.rsplit('/').next().unwrap_or_default()),
                None => format!("/{destination}"),
            })
        })
        .collect();
    ensure!(
        installed.len() == deb["assets"].as_array().map_or(0, Vec::len),
        "an asset's source is missing"
    );
    for path in exec.split_whitespace().filter(|w| w.starts_with('/')) {
        ensure!(
            installed.iter().any(|i| i == path),
            "the unit runs {path}, which the package does not install: {installed:?}"
        );
    }
    let units = deb["systemd-units"]["unit-scripts"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        repo_path("gateway")
            .join(units)
            .join("dialtone.service")
            .is_file(),
        "cargo-deb would not find the unit in {units}"
    );
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
        "LimitNOFILE=",
    ] {
        ensure!(unit.contains(hardening), "the unit lacks {hardening}");
    }
    Ok(())
}
