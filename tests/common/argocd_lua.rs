//! Argo CD's health scripts (config/argocd/herald.dev_<Kind>/health.lua) run
//! under a real Lua the way Argo CD runs them: the object as the global
//! `obj`, only the safe standard libraries. Shared by tests/argocd_health.rs
//! (fixtures) and tests/control_plane (objects read back from a real API
//! server).
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

pub const GROUP: &str = "herald.dev";

/// The health script of one herald kind.
pub fn script_path(kind: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join("argocd")
        .join(format!("{GROUP}_{kind}"))
        .join("health.lua")
}

/// The Lua interpreter (`lua5.4`, or `$HERALD_LUA`), checked once.
pub fn lua() -> &'static str {
    static LUA: OnceLock<String> = OnceLock::new();
    LUA.get_or_init(|| {
        let lua = std::env::var("HERALD_LUA").unwrap_or_else(|_| "lua5.4".to_owned());
        match Command::new(&lua).arg("-v").output() {
            Ok(out) if out.status.success() => lua,
            Ok(out) => panic!(
                "`{lua} -v` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!(
                "`{lua}` could not be started ({e}). The Argo CD health checks are tested under a \
                 real Lua: install it with `apt-get install -y lua5.4` (CI's .ci/run must do so), \
                 or set HERALD_LUA to a Lua 5.2+ interpreter."
            ),
        }
    })
}

/// Writes `v` as a Lua expression. Strings are escaped byte by byte
/// (`\ddd`), so any JSON text survives; JSON null becomes nil, as an absent
/// field.
pub fn lua_literal(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => write!(out, "{b}").unwrap(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => write!(out, "{i}").unwrap(),
            (None, Some(u), _) => write!(out, "{u}").unwrap(),
            (None, None, Some(f)) => write!(out, "{f:?}").unwrap(),
            _ => panic!("unrepresentable number {n}"),
        },
        Value::String(s) => lua_string(s, out),
        Value::Array(items) => {
            out.push('{');
            for item in items {
                lua_literal(item, out);
                out.push_str(", ");
            }
            out.push('}');
        }
        Value::Object(map) => {
            out.push('{');
            for (k, item) in map {
                out.push('[');
                lua_string(k, out);
                out.push_str("] = ");
                lua_literal(item, out);
                out.push_str(", ");
            }
            out.push('}');
        }
    }
}

fn lua_string(s: &str, out: &mut String) {
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x20..=0x7e => out.push(char::from(b)),
            _ => write!(out, "\\{b:03}").unwrap(),
        }
    }
    out.push('"');
}

/// Runs the health script at `arg[1]` the way Argo CD does: the object as the
/// global `obj`, only the safe standard libraries (no io, os, require or
/// load), and a table `{status, message}` back. Prints `status\tmessage`.
const HARNESS: &str = r#"
local env = {
  obj = OBJ, ipairs = ipairs, pairs = pairs, next = next, select = select,
  type = type, tostring = tostring, tonumber = tonumber,
  error = error, assert = assert, pcall = pcall,
  string = string, table = table, math = math,
}
local chunk = assert(loadfile(arg[1], "t", env))
local hs = chunk()
if type(hs) ~= "table" then
  error("the health script returned " .. type(hs) .. ", not a table")
end
io.write(tostring(hs.status), "\t", tostring(hs.message), "\n")
"#;

/// The (status, message) the script at `script` gives `obj`.
pub fn run_health(script: &Path, obj: &Value) -> Result<(String, String), String> {
    let mut program = String::from("local OBJ = ");
    lua_literal(obj, &mut program);
    program.push_str(HARNESS);

    let mut child = Command::new(lua())
        .arg("-")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", lua()))?;
    {
        let mut pipe = child.stdin.take().ok_or("no stdin")?;
        pipe.write_all(program.as_bytes())
            .map_err(|e| format!("feeding the harness: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "lua failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8(out.stdout).map_err(|e| e.to_string())?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let (status, message) = text
        .split_once('\t')
        .ok_or_else(|| format!("unexpected harness output {text:?}"))?;
    Ok((status.to_owned(), message.to_owned()))
}
