//! Scripts (MailEnable's "Scripts", SPEC §5): an operator's Lua 5.4 script called at
//! connect, EHLO, MAIL, RCPT and the end of the content. Decision 006 says why Lua and why
//! on the shard.
//!
//! A script defines any of the global functions `connect`, `ehlo`, `mail`, `rcpt` and
//! `data`; each is called with a context table (the client, the HELO name, the envelope so
//! far, at `data` the header fields and the size, and the body when configured) and returns
//! nothing (go on) or a verdict made by the `ringmx` table's functions:
//!
//! ```lua
//! function rcpt(ctx)
//!   if ctx.recipient:match("^test%-") then return ringmx.reject(550, "5.1.1", "no such test") end
//!   ringmx.add_header("X-Checked", "rcpt " .. ctx.recipient)
//! end
//! ```
//!
//! `ringmx.accept()`, `ringmx.reject([code,] [status,] text)`, `ringmx.tempfail([code,]
//! [status,] text)`, `ringmx.quarantine(reason)`; and, for the transaction,
//! `ringmx.add_header(name, value)` and `ringmx.route("host[:port]")` (deliver the whole
//! message through that host). `ringmx.log(text)` writes to the server's log.
//!
//! # Sandbox and budget
//!
//! Each shard thread has its own Lua state ([`ScriptHost`]) with only the `string`, `table`,
//! `math` and `utf8` libraries, no `load`, `loadfile`, `dofile` or `require`: no file or
//! network access unless `[scripts] libraries` adds `io` or `os`. A call may run for
//! `[scripts] budget` (checked every 1,000 VM instructions) and the state may hold
//! `[scripts] memory_limit` bytes; past either, or on any error, the hook fails safe: the
//! command gets 451 4.3.0 and the error is logged with the script's line. The budget is
//! checked between instructions: a single library call (a pattern match over a long
//! string) runs to its end, so what a hook sees is bounded (the body only on request).
//!
//! A configuration with scripts compiles them before it is used ([`Scripts::load`]): a
//! syntax error fails `check-config`, the start, or the reload (which keeps the old
//! scripts). Each shard builds its state from the new [`Scripts`] on its next connection.

use crate::wire::Reply;
use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The points where a script is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// After the connect checks passed, before the greeting.
    Connect = 0,
    /// After the HELO/EHLO checks passed, before the reply.
    Ehlo = 1,
    /// After the MAIL FROM checks passed, before the reply.
    Mail = 2,
    /// After the RCPT TO checks passed, before the policy services and the reply.
    Rcpt = 3,
    /// At the end of the content, before the policy services and the milters.
    Data = 4,
}

impl Hook {
    pub const ALL: [Hook; 5] = [Hook::Connect, Hook::Ehlo, Hook::Mail, Hook::Rcpt, Hook::Data];

    /// The global function a script defines for this hook.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Ehlo => "ehlo",
            Hook::Mail => "mail",
            Hook::Rcpt => "rcpt",
            Hook::Data => "data",
        }
    }

    /// Does a transaction exist here (so that headers and a route can be set)?
    fn has_transaction(self) -> bool {
        matches!(self, Hook::Mail | Hook::Rcpt | Hook::Data)
    }
}

/// Extra Lua libraries a script may be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Library {
    /// Files (`io.open`, …).
    Io,
    /// `os.time`, `os.getenv`, `os.remove`, …
    Os,
}

/// How scripts run, from `[scripts]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub path: PathBuf,
    pub budget: Duration,
    pub memory_limit: usize,
    pub libraries: Vec<Library>,
    /// The `data` hook sees the body (`ctx.body`), not only the header fields and size.
    pub body: bool,
}

/// A compiled script: its source (each shard builds its own state from it) and what it
/// defines. Shared by every shard of one configuration.
#[derive(Debug)]
pub struct Scripts {
    pub settings: Settings,
    source: String,
    defined: [bool; 5],
}

impl Scripts {
    /// Reads and compiles the script of `settings`, runs its top level once in a sandbox of
    /// its own, and notes the hooks it defines. The error names the file and the line.
    pub fn load(settings: Settings) -> Result<Arc<Scripts>, String> {
        let source = std::fs::read_to_string(&settings.path)
            .map_err(|e| format!("cannot read {}: {e}", settings.path.display()))?;
        let mut s = Scripts { settings, source, defined: [false; 5] };
        let host = State::new(&s)?;
        for h in Hook::ALL {
            s.defined[h as usize] = host.functions[h as usize].is_some();
        }
        Ok(Arc::new(s))
    }

    /// Does the script define `hook`?
    pub fn defines(&self, hook: Hook) -> bool {
        self.defined[hook as usize]
    }
}

/// What a hook sees.
#[derive(Debug, Default)]
pub struct Context<'a> {
    pub session: u64,
    pub client_ip: String,
    pub client_port: u16,
    pub server_ip: String,
    pub server_port: u16,
    pub helo: Option<&'a str>,
    /// The EHLO (not HELO) was used.
    pub esmtp: bool,
    /// The TLS version, under TLS.
    pub tls: Option<&'a str>,
    /// The login, once authenticated.
    pub auth: Option<&'a str>,
    /// The reverse path (empty for `<>`), from MAIL on.
    pub sender: Option<&'a str>,
    /// The recipient asked about, at RCPT.
    pub recipient: Option<&'a str>,
    /// The recipients accepted so far.
    pub recipients: Vec<&'a str>,
    /// At `data`: the content as the client sent it (the script sees its header fields,
    /// and its body when `[scripts] body` is on) and its size.
    pub message: Option<&'a [u8]>,
    pub size: u64,
}

/// A script's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on as without the script (`nil` or `ringmx.accept()`).
    Continue,
    /// Answer the command with this reply (4xx or 5xx).
    Refuse(Reply),
    /// Accept the message but hold it in the queue until an operator releases it.
    Quarantine(String),
}

/// A call's verdict and what it asked for besides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub verdict: Option<Verdict>,
    /// Header fields (`Name: value`) to put on top of the message.
    pub headers: Vec<String>,
    /// Deliver the whole message through this host (`host` or `host:port`).
    pub route: Option<String>,
}

impl Outcome {
    pub fn verdict(&self) -> &Verdict {
        self.verdict.as_ref().unwrap_or(&Verdict::Continue)
    }
}

/// The reply of a hook that failed: the command may be tried again.
pub fn failure_reply() -> Reply {
    Reply::new(451, "4.3.0", "Error: local policy script failed, try again later")
}

/// What the `ringmx` functions collect during one call.
#[derive(Default)]
struct Effects {
    hook: Option<Hook>,
    headers: Vec<String>,
    route: Option<String>,
}

/// A Lua state with a script loaded: one per shard thread.
struct State {
    lua: Lua,
    functions: [Option<Function>; 5],
    /// When the running call's budget ends; read by the instruction hook.
    deadline: Rc<Cell<Option<Instant>>>,
}

impl State {
    fn new(s: &Scripts) -> Result<State, String> {
        let mut libs = StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8;
        for l in &s.settings.libraries {
            libs |= match l {
                Library::Io => StdLib::IO,
                Library::Os => StdLib::OS,
            };
        }
        let lua = Lua::new_with(libs, LuaOptions::new()).map_err(|e| format!("cannot start Lua: {e}"))?;
        lua.set_memory_limit(s.settings.memory_limit).map_err(|e| e.to_string())?;
        lua.set_app_data(Effects::default());
        install_api(&lua).map_err(|e| format!("cannot set up the script API: {e}"))?;
        let deadline: Rc<Cell<Option<Instant>>> = Rc::default();
        let d = deadline.clone();
        lua.set_hook(HookTriggers::new().every_nth_instruction(1000), move |_, debug| match d.get() {
            Some(t) if Instant::now() >= t => {
                // Where it was: the operator's file and line.
                let src = debug.source().short_src.map(|s| s.into_owned()).unwrap_or_default();
                let line = debug.current_line().map(|l| l.to_string()).unwrap_or_default();
                Err(mlua::Error::runtime(format!("{src}:{line}: the script ran past its budget")))
            }
            _ => Ok(VmState::Continue),
        })
        .map_err(|e| e.to_string())?;
        // The top level runs under the budget too: a script that loops there fails to load.
        deadline.set(Some(Instant::now() + s.settings.budget));
        let name = format!("@{}", s.settings.path.display());
        let loaded = lua.load(&s.source).set_name(name).exec();
        deadline.set(None);
        // The limit is on while the script runs, not while we build its context: with a
        // limit set, mlua protects every value it pushes (a C call each), which tripled
        // the cost of a call.
        lua.set_memory_limit(0).map_err(|e| e.to_string())?;
        loaded.map_err(|e| first_line(&e))?;
        let g = lua.globals();
        let mut functions: [Option<Function>; 5] = Default::default();
        for h in Hook::ALL {
            functions[h as usize] = match g.get::<Value>(h.name()).map_err(|e| e.to_string())? {
                Value::Function(f) => Some(f),
                Value::Nil => None,
                _ => return Err(format!("{}: `{}` is not a function", s.settings.path.display(), h.name())),
            };
        }
        Ok(State { lua, functions, deadline })
    }
}

/// The budget's hook runs between VM instructions, so one long call into Lua's C library
/// cannot be stopped there. The string and memory limits bound most of them; pattern
/// matching is the exception: its backtracking costs up to length^k steps for a pattern
/// with k unbounded repetitions (`*`, `+`, `-`), which one call on a long header can make
/// hours. So `string.find`, `match`, `gmatch` and `gsub` refuse (an error: the hook fails
/// safe with 451 4.3.0) a pattern whose worst case, length^k, passes 10^7 steps (tens of
/// milliseconds): any pattern on 10 MB, two repetitions on 3 KB, three on 200 bytes.
const PATTERN_GUARD: &str = r#"
do
  local find, match, gmatch, gsub, byte = string.find, string.match, string.gmatch, string.gsub, string.byte
  local LIMIT = 1e7
  local function check(s, p, plain)
    if plain or type(s) ~= "string" or type(p) ~= "string" then return end
    local q, i, n = 0, 1, #p
    while i <= n do
      local c = byte(p, i)
      if c == 37 then                      -- %x: an escape or a class
        i = i + 2
      elseif c == 91 then                  -- [set]: its '-' are ranges
        i = i + 1
        if byte(p, i) == 94 then i = i + 1 end
        if byte(p, i) == 93 then i = i + 1 end
        while i <= n and byte(p, i) ~= 93 do
          if byte(p, i) == 37 then i = i + 1 end
          i = i + 1
        end
        i = i + 1
      else
        if c == 42 or c == 43 or c == 45 then q = q + 1 end
        i = i + 1
      end
    end
    if q > 0 and (#s) ^ q > LIMIT then
      error(string.format("pattern too costly for the budget: %d repetitions over %d bytes", q, #s), 3)
    end
  end
  string.find = function(s, p, init, plain) check(s, p, plain) return find(s, p, init, plain) end
  string.match = function(s, p, init) check(s, p) return match(s, p, init) end
  string.gmatch = function(s, p, init) check(s, p) return gmatch(s, p, init) end
  string.gsub = function(s, p, r, n) check(s, p) return gsub(s, p, r, n) end
end
"#;

/// The first line of a Lua error (the message with the script's `file:line:`), without the
/// traceback mlua appends.
fn first_line(e: &mlua::Error) -> String {
    let text = match e {
        mlua::Error::CallbackError { cause, .. } => cause.to_string(),
        other => other.to_string(),
    };
    text.lines().next().unwrap_or_default().trim_start_matches("runtime error: ").to_string()
}

/// The `ringmx` table and the sandbox's removals.
fn install_api(lua: &Lua) -> mlua::Result<()> {
    let g = lua.globals();
    for unsafe_fn in ["dofile", "loadfile", "load", "require", "collectgarbage"] {
        g.raw_set(unsafe_fn, Value::Nil)?;
    }
    lua.load(PATTERN_GUARD).set_name("=ringmx").exec()?;
    let api = lua.create_table()?;
    api.raw_set("accept", lua.create_function(|lua, ()| verdict_table(lua, "accept", None, None, None))?)?;
    api.raw_set("reject", lua.create_function(|lua, args: mlua::MultiValue| reply_verdict(lua, "reject", args))?)?;
    api.raw_set("tempfail", lua.create_function(|lua, args: mlua::MultiValue| reply_verdict(lua, "tempfail", args))?)?;
    api.raw_set(
        "quarantine",
        lua.create_function(|lua, reason: Option<String>| {
            let reason = reason.unwrap_or_else(|| "held by a script".into());
            verdict_table(lua, "quarantine", None, None, Some(reason))
        })?,
    )?;
    api.raw_set(
        "add_header",
        lua.create_function(|lua, (name, value): (String, String)| {
            let mut fx = lua.app_data_mut::<Effects>().ok_or_else(|| mlua::Error::runtime("no call"))?;
            if !fx.hook.is_some_and(Hook::has_transaction) {
                return Err(mlua::Error::runtime("add_header: no transaction at this hook"));
            }
            check_header(&name, &value).map_err(mlua::Error::runtime)?;
            fx.headers.push(format!("{name}: {value}"));
            Ok(())
        })?,
    )?;
    api.raw_set(
        "route",
        lua.create_function(|lua, host: String| {
            let mut fx = lua.app_data_mut::<Effects>().ok_or_else(|| mlua::Error::runtime("no call"))?;
            if !fx.hook.is_some_and(Hook::has_transaction) {
                return Err(mlua::Error::runtime("route: no transaction at this hook"));
            }
            if !is_route(&host) {
                return Err(mlua::Error::runtime(format!("route: {host:?} is not host or host:port")));
            }
            fx.route = Some(host);
            Ok(())
        })?,
    )?;
    api.raw_set(
        "log",
        lua.create_function(|_, text: String| {
            log::info!("script: {}", text.chars().take(1000).collect::<String>());
            Ok(())
        })?,
    )?;
    g.raw_set("ringmx", api)?;
    Ok(())
}

fn verdict_table(
    lua: &Lua,
    action: &str,
    code: Option<u16>,
    status: Option<String>,
    text: Option<String>,
) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("action", action)?;
    t.raw_set("code", code)?;
    t.raw_set("status", status)?;
    t.raw_set("text", text)?;
    Ok(t)
}

/// `reject`/`tempfail` with `([code,] [status,] text)`.
fn reply_verdict(lua: &Lua, action: &str, args: mlua::MultiValue) -> mlua::Result<Table> {
    let mut code = None;
    let mut strings = Vec::new();
    for v in args {
        match v {
            Value::Integer(n) if code.is_none() && strings.is_empty() => code = Some(n),
            Value::String(s) => strings.push(s.to_str()?.to_string()),
            other => return Err(mlua::Error::runtime(format!("{action}: unexpected {}", other.type_name()))),
        }
    }
    let (lo, hi) = if action == "reject" { (500, 599) } else { (400, 499) };
    let code = code.unwrap_or(if action == "reject" { 550 } else { 451 });
    if !(lo..=hi).contains(&code) {
        return Err(mlua::Error::runtime(format!("{action}: code {code} is not {lo}–{hi}")));
    }
    let (status, text) = match strings.as_slice() {
        [] => (None, None),
        [t] => (None, Some(t.clone())),
        [s, t] => (Some(s.clone()), Some(t.clone())),
        _ => return Err(mlua::Error::runtime(format!("{action}: too many arguments"))),
    };
    verdict_table(lua, action, Some(code as u16), status, text)
}

/// A header field a script may add: RFC 5322 §3.6.8 name, one line of value.
fn check_header(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 76 || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(format!("add_header: {name:?} is not a header field name"));
    }
    if value.contains(['\r', '\n', '\0']) || name.len() + value.len() > 996 {
        return Err("add_header: the value must be one line of at most 998 characters with the name".into());
    }
    Ok(())
}

fn is_route(host: &str) -> bool {
    let (h, port_ok) = match crate::routing::split_host_port(host) {
        Some((h, _)) if host.contains(':') && !host.ends_with(']') => (h, true),
        _ => (host.to_string(), !host.contains(':') || host.ends_with(']')),
    };
    let h = h.trim_start_matches('[').trim_end_matches(']').to_string();
    port_ok
        && !h.is_empty()
        && h.len() <= 255
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
        && (h.parse::<std::net::IpAddr>().is_ok() || !h.contains(':'))
}

/// RFC 3463 `class.subject.detail` whose class is the code's first digit.
fn is_status(s: &str, code: u16) -> bool {
    let mut parts = s.split('.');
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    parts.next() == Some(&(code / 100).to_string())
        && digits(parts.next())
        && digits(parts.next())
        && parts.next().is_none()
}

/// The reply of a `reject`/`tempfail` table.
fn reply_of(t: &Table, action: &str) -> Result<Reply, String> {
    let code: u16 = t.get("code").map_err(|e| e.to_string())?;
    let status: Option<String> = t.get("status").map_err(|e| e.to_string())?;
    let text: Option<String> = t.get("text").map_err(|e| e.to_string())?;
    let text = text.unwrap_or_else(|| if action == "reject" { "Rejected".into() } else { "Try again later".into() });
    if text.contains(['\r', '\n']) || text.len() > 400 {
        return Err(format!("{action}: the text must be one line of at most 400 characters"));
    }
    let default = if code >= 500 { "5.7.1" } else { "4.7.1" };
    match status {
        None => Ok(Reply::new(code, default, text)),
        Some(s) if !is_status(&s, code) => Err(format!("{action}: {s:?} is not a status of class {}", code / 100)),
        // A status outside the reply type's static set travels in the text, where it is
        // written exactly the same way.
        Some(s) => Ok(match KNOWN_STATUSES.iter().find(|k| **k == s) {
            Some(k) => Reply::new(code, k, text),
            None => Reply::new(code, "", format!("{s} {text}")),
        }),
    }
}

const KNOWN_STATUSES: [&str; 12] =
    ["5.7.1", "5.7.0", "5.1.1", "5.1.0", "5.2.1", "5.2.2", "5.6.0", "4.7.1", "4.7.0", "4.3.0", "4.2.0", "4.2.2"];

/// A shard's Lua state for the current [`Scripts`], and the count of failed calls (their
/// warnings are rate-limited: a failing script must not flood the log).
pub struct ScriptHost {
    scripts: Arc<Scripts>,
    state: State,
    last_warning: Option<Instant>,
    unlogged_failures: u64,
}

impl ScriptHost {
    pub fn new(scripts: Arc<Scripts>) -> Result<ScriptHost, String> {
        let state = State::new(&scripts)?;
        Ok(ScriptHost { scripts, state, last_warning: None, unlogged_failures: 0 })
    }

    /// The scripts this state was built from.
    pub fn scripts(&self) -> &Arc<Scripts> {
        &self.scripts
    }

    pub fn defines(&self, hook: Hook) -> bool {
        self.state.functions[hook as usize].is_some()
    }

    /// Calls `hook` (a hook the script does not define: [`Verdict::Continue`]). An error,
    /// the budget or the memory limit give `Refuse(451 4.3.0)`, logged.
    pub fn run(&mut self, hook: Hook, cx: &Context<'_>) -> Outcome {
        let Some(f) = self.state.functions[hook as usize].clone() else { return Outcome::default() };
        match self.call(hook, &f, cx) {
            Ok(o) => o,
            Err(e) => {
                self.warn(hook, &e);
                Outcome { verdict: Some(Verdict::Refuse(failure_reply())), ..Outcome::default() }
            }
        }
    }

    fn call(&mut self, hook: Hook, f: &Function, cx: &Context<'_>) -> Result<Outcome, String> {
        let lua = &self.state.lua;
        *lua.app_data_mut::<Effects>().ok_or("no effects")? = Effects { hook: Some(hook), ..Effects::default() };
        let t = context_table(lua, hook, cx, self.scripts.settings.body).map_err(|e| first_line(&e))?;
        lua.set_memory_limit(self.scripts.settings.memory_limit).map_err(|e| e.to_string())?;
        self.state.deadline.set(Some(Instant::now() + self.scripts.settings.budget));
        let r = f.call::<Value>(t);
        self.state.deadline.set(None);
        lua.set_memory_limit(0).map_err(|e| e.to_string())?;
        let fx = std::mem::take(&mut *lua.app_data_mut::<Effects>().ok_or("no effects")?);
        let verdict = match r.map_err(|e| first_line(&e))? {
            Value::Nil | Value::Boolean(true) => None,
            Value::Table(t) => {
                let action: String = t.get("action").map_err(|_| "a verdict table without `action`".to_string())?;
                match action.as_str() {
                    "accept" => Some(Verdict::Continue),
                    "reject" | "tempfail" => Some(Verdict::Refuse(reply_of(&t, &action)?)),
                    "quarantine" if hook == Hook::Data => {
                        Some(Verdict::Quarantine(t.get::<String>("text").map_err(|e| e.to_string())?))
                    }
                    "quarantine" => return Err("quarantine is a verdict of the data hook".into()),
                    other => return Err(format!("unknown action {other:?}")),
                }
            }
            other => return Err(format!("a hook returns nil or a ringmx verdict, not a {}", other.type_name())),
        };
        Ok(Outcome { verdict, headers: fx.headers, route: fx.route })
    }

    fn warn(&mut self, hook: Hook, e: &str) {
        let now = Instant::now();
        if self.last_warning.is_some_and(|t| now.duration_since(t) < Duration::from_secs(10)) {
            self.unlogged_failures += 1;
            return;
        }
        let more = std::mem::take(&mut self.unlogged_failures);
        let also = if more > 0 { format!(" (and {more} failure(s) not logged)") } else { String::new() };
        log::warn!("script hook {}: {e}: answered 451 4.3.0{also}", hook.name());
        self.last_warning = Some(now);
    }
}

thread_local! {
    /// This thread's state for the newest [`Scripts`] it was asked about.
    static HOST: std::cell::RefCell<Option<Rc<std::cell::RefCell<ScriptHost>>>> = const { std::cell::RefCell::new(None) };
}

/// The state of this thread (a shard) for `scripts`: the one already built when it is for
/// these scripts, else a new one, which later sessions of the thread share. A session keeps
/// the state it started with; a reload's scripts get a new one. `None` (logged) when the
/// state cannot be built, which [`Scripts::load`] has already ruled out but for memory.
pub fn host_for_this_thread(scripts: &Arc<Scripts>) -> Option<Rc<std::cell::RefCell<ScriptHost>>> {
    HOST.with(|cell| {
        let mut slot = cell.borrow_mut();
        if let Some(h) = slot.as_ref()
            && Arc::ptr_eq(h.borrow().scripts(), scripts)
        {
            return Some(h.clone());
        }
        match ScriptHost::new(scripts.clone()) {
            Ok(h) => {
                let h = Rc::new(std::cell::RefCell::new(h));
                *slot = Some(h.clone());
                Some(h)
            }
            Err(e) => {
                log::error!("scripts: cannot build this shard's state: {e}");
                None
            }
        }
    })
}

/// The context table a hook is called with.
fn context_table(lua: &Lua, hook: Hook, cx: &Context<'_>, with_body: bool) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 16)?;
    t.raw_set("hook", hook.name())?;
    t.raw_set("session", format!("{:x}", cx.session))?;
    t.raw_set("client_ip", cx.client_ip.as_str())?;
    t.raw_set("client_port", cx.client_port)?;
    t.raw_set("server_ip", cx.server_ip.as_str())?;
    t.raw_set("server_port", cx.server_port)?;
    t.raw_set("helo", cx.helo)?;
    t.raw_set("esmtp", cx.esmtp)?;
    t.raw_set("tls", cx.tls)?;
    t.raw_set("auth", cx.auth)?;
    t.raw_set("sender", cx.sender)?;
    t.raw_set("recipient", cx.recipient)?;
    if hook.has_transaction() {
        let r = lua.create_table_with_capacity(cx.recipients.len(), 0)?;
        for (i, a) in cx.recipients.iter().enumerate() {
            r.raw_set(i + 1, *a)?;
        }
        t.raw_set("recipients", r)?;
    }
    if let Some(m) = cx.message {
        let (fields, body_at) = crate::policy::milter::split_message(m);
        t.raw_set("size", cx.size)?;
        t.raw_set("headers", header_table(lua, fields)?)?;
        if with_body {
            t.raw_set("body", lua.create_string(&m[body_at..])?)?;
        }
    }
    Ok(t)
}

/// The header fields as a list of `{name = …, value = …}` in the order received, each
/// value unfolded (RFC 5322 §2.2.3: the line breaks removed, the white space kept).
fn header_table(lua: &Lua, fields: Vec<(String, String)>) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(fields.len(), 0)?;
    for (i, (name, value)) in fields.into_iter().enumerate() {
        let f = lua.create_table_with_capacity(0, 2)?;
        f.raw_set("name", name)?;
        f.raw_set("value", value.replace('\n', "").trim_start())?;
        t.raw_set(i + 1, f)?;
    }
    Ok(t)
}

/// The settings for `path` with the defaults (for tests and callers building a config in
/// code).
pub fn settings(path: &Path) -> Settings {
    Settings {
        path: path.to_path_buf(),
        budget: Duration::from_millis(5),
        memory_limit: 16 << 20,
        libraries: Vec::new(),
        body: false,
    }
}

#[cfg(test)]
mod tests;
