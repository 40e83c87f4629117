//! The config file: one TOML table whose keys are the server's long flags, with the values the
//! flags would take (`rate-limit = 0`, `logic-nodes = ["10.0.0.1:7000", "10.0.0.2:7000"]`,
//! `no-quic = true`). Its values become the flags' defaults, so the `IM_*` environment and the
//! command line override them, in that order. A key that is no flag is refused, naming it; a
//! value that does not parse is refused by the flag's own parser, which names the flag (the
//! same word as the key). A table named after a subcommand holds that subcommand's flags:
//! `[logic]` for `im-server logic`.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;

/// The flag (and its environment variable) naming the config file.
pub const CONFIG_FLAG: &str = "config";
/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "IM_CONFIG";

/// Why a config file does not make settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// Not TOML.
    #[error("config file {path}: not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line.
        message: String,
    },
    /// A key that names no setting.
    #[error(
        "config file {path}: unknown key `{key}` (keys are the long flags of `im-server --help`, without the dashes)"
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A value of a kind no flag takes.
    #[error("config file {path}: key `{key}`: {reason}")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The config file named by `--config PATH` (or `--config=PATH`) among `args`, else by
/// `IM_CONFIG`. Read before the command line is parsed, because its values are the defaults
/// the parse uses.
pub fn config_path(args: &[OsString], env: Option<OsString>) -> Option<PathBuf> {
    let flag = format!("--{CONFIG_FLAG}");
    let with_value = format!("--{CONFIG_FLAG}=");
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == flag {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix(&with_value) {
            return Some(PathBuf::from(path));
        }
    }
    env.filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// What a config file set: the command with the file's values as defaults, and which keys
/// came from it.
pub struct Applied {
    /// The command to parse the command line with.
    pub command: clap::Command,
    /// Flags the file set.
    pub keys: BTreeSet<String>,
}

/// Reads `path` and makes its values the defaults of `command`'s flags.
pub fn apply(command: clap::Command, path: &Path) -> Result<Applied, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    apply_text(command, path, &text)
}

/// [`apply`] with the file's text already read.
pub fn apply_text(command: clap::Command, path: &Path, text: &str) -> Result<Applied, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    apply_table(command, path, table)
}

fn apply_table(
    mut command: clap::Command,
    path: &Path,
    table: toml::Table,
) -> Result<Applied, ConfigError> {
    let flags: std::collections::HashMap<String, clap::Id> = command
        .get_arguments()
        .filter_map(|arg| Some((arg.get_long()?.to_owned(), arg.get_id().clone())))
        .filter(|(long, _)| long != CONFIG_FLAG)
        .collect();
    let mut keys = BTreeSet::new();
    for (key, value) in table {
        // A table named after a subcommand holds that subcommand's own flags (`[logic]`).
        if let toml::Value::Table(inner) = &value
            && let Some(sub) = command.find_subcommand(&key).cloned()
        {
            let applied = apply_table(sub, path, inner.clone())?;
            keys.extend(applied.keys.iter().map(|k| format!("{key}.{k}")));
            command = command.mut_subcommand(&key, |_| applied.command);
            continue;
        }
        let Some(id) = flags.get(&key) else {
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key,
            });
        };
        let bad = |reason: &str| ConfigError::BadValue {
            path: path.to_owned(),
            key: key.clone(),
            reason: reason.to_owned(),
        };
        let text = match &value {
            toml::Value::Array(items) => {
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    parts
                        .push(scalar(item).ok_or_else(|| {
                            bad("a list holds strings, numbers or booleans only")
                        })?);
                }
                parts.join(",")
            }
            other => scalar(other)
                .ok_or_else(|| bad("a value is a string, a number, a boolean or a list"))?,
        };
        // A flag the command requires is given by the file.
        command = command.mut_arg(id.clone(), |arg| arg.default_value(text).required(false));
        keys.insert(key);
    }
    Ok(Applied { command, keys })
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Flags whose values are never printed.
const MASKED: &[&str] = &[
    "secret",
    "admin-key",
    "push-webhook-secret",
    "webhook-secret",
];

/// The effective settings as TOML (each line says where its value came from: the config file,
/// the environment, a flag or the built-in default), with the token secret masked. Flags that
/// take no value in a config file (help, version, the config file itself) are left out.
pub fn effective(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    from_file: &BTreeSet<String>,
) -> String {
    let mut out = String::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == CONFIG_FLAG || long == "help" || long == "version" {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) if from_file.contains(long) => "config file",
            Some(ValueSource::DefaultValue) => "default",
            _ => "",
        };
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if values.is_empty() {
            out += &format!("# {long} =  (not set)\n");
            continue;
        }
        let shown = if MASKED.contains(&long) {
            toml::Value::String("********".into()).to_string()
        } else if arg.get_value_delimiter().is_some() || values.len() > 1 {
            toml::Value::Array(values.into_iter().map(toml::Value::String).collect()).to_string()
        } else {
            toml::Value::String(values.into_iter().next().unwrap_or_default()).to_string()
        };
        out += &format!("{long} = {shown}  # {source}\n");
    }
    out
}

/// The settings in effect of subcommand `name` (a `[name]` table in the file), as a TOML table
/// like [`effective`]'s. `applied` is the command with the file's values as defaults; the
/// subcommand is parsed as if run with no flags of its own (its environment still applies).
/// `None` when it would not start that way (a setting it requires is set nowhere): the text
/// then says which.
pub fn effective_subcommand(
    applied: &clap::Command,
    name: &str,
    from_file: &BTreeSet<String>,
) -> String {
    let (Some(sub), Some(plain)) = (
        applied.find_subcommand(name),
        crate::cli::Cli::command_for_docs()
            .find_subcommand(name)
            .cloned(),
    ) else {
        return String::new();
    };
    let keys: BTreeSet<String> = from_file
        .iter()
        .filter_map(|k| k.strip_prefix(&format!("{name}.")).map(str::to_owned))
        .collect();
    match sub.clone().try_get_matches_from([name]) {
        Ok(matches) => format!("\n[{name}]\n{}", effective(&plain, &matches, &keys)),
        Err(e) => format!(
            "\n# [{name}]: not shown, `im-server {name}` would not start with these settings: {}\n",
            e.kind()
        ),
    }
}
