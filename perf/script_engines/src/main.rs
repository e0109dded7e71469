//! The script engines considered for ringmx's hooks, on the work a hook does: build the
//! context of a command, call the hook, read its verdict. Prints, per engine: nanoseconds
//! per call of a hook that does nothing and of a typical one (sender domain against a table
//! of 200 refused domains, a pattern on the recipient), bytes allocated for one loaded
//! state, and how far past a 5 ms budget a script that loops forever runs before it is
//! stopped. Decision 006 records the figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Counting;
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts the bytes asked for.
unsafe impl GlobalAlloc for Counting {
    // SAFETY: the caller keeps GlobalAlloc's contract (a non-zero-size layout), which this
    // passes on to System unchanged.
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout is passed on as given.
        unsafe { System.alloc(l) }
    }
    // SAFETY: the caller gives back a block this allocator returned, with its layout.
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        ALLOCATED.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const BUDGET: Duration = Duration::from_millis(5);
const CALLS: u32 = 200_000;

struct Ctx {
    client_ip: &'static str,
    helo: &'static str,
    sender: String,
    recipient: String,
    recipients: usize,
}

fn contexts() -> Vec<Ctx> {
    (0..64)
        .map(|i| Ctx {
            client_ip: "192.0.2.17",
            helo: "mail.example.net",
            sender: format!("user{i}@sender{}.example", i % 300),
            recipient: if i % 7 == 0 { format!("abuse@dest{i}.example") } else { format!("rcpt{i}@dest.example") },
            recipients: i % 5,
        })
        .collect()
}

fn blocked() -> Vec<String> {
    (0..200).map(|i| format!("sender{}.example", i * 3 + 1)).collect()
}

mod lua {
    use super::*;
    use mlua::{HookTriggers, Lua, LuaOptions, StdLib, Value, VmState};

    pub fn source() -> String {
        let list: Vec<String> = blocked().iter().map(|d| format!("[\"{d}\"]=true")).collect();
        format!(
            r#"
local refused = {{ {} }}
function noop(ctx) end
function check(ctx)
  local domain = string.match(ctx.sender, "@(.+)$")
  if domain and refused[string.lower(domain)] then
    return {{ action = "reject", code = 550, text = "5.7.1 sender domain refused" }}
  end
  if string.find(ctx.recipient, "^abuse@") then return nil end
  if ctx.recipients > 50 then return {{ action = "tempfail", text = "too many" }} end
  return nil
end
function forever(ctx) local n = 0 while true do n = n + 1 end end
"#,
            list.join(", ")
        )
    }

    pub fn state() -> Lua {
        let lua = Lua::new_with(StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8, LuaOptions::default())
            .expect("lua");
        lua.load(source()).exec().expect("script");
        lua
    }

    fn call(lua: &Lua, f: &mlua::Function, c: &Ctx) -> bool {
        let t = lua.create_table_with_capacity(0, 5).unwrap();
        t.raw_set("client_ip", c.client_ip).unwrap();
        t.raw_set("helo", c.helo).unwrap();
        t.raw_set("sender", c.sender.as_str()).unwrap();
        t.raw_set("recipient", c.recipient.as_str()).unwrap();
        t.raw_set("recipients", c.recipients).unwrap();
        match f.call::<Value>(t) {
            Ok(Value::Table(v)) => v.get::<String>("action").unwrap() == "reject",
            Ok(_) => false,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn run() {
        let before = ALLOCATED.load(Ordering::Relaxed);
        let lua = state();
        let bytes = ALLOCATED.load(Ordering::Relaxed) - before;
        let ctxs = contexts();
        let g = lua.globals();
        for name in ["noop", "check"] {
            let f: mlua::Function = g.get(name).unwrap();
            let mut refused = 0;
            for c in &ctxs {
                call(&lua, &f, c);
            }
            let t = Instant::now();
            for i in 0..CALLS {
                refused += call(&lua, &f, &ctxs[i as usize % ctxs.len()]) as u32;
            }
            let ns = t.elapsed().as_nanos() as f64 / CALLS as f64;
            println!("lua54  {name:<6} {ns:8.0} ns/call  (refused {refused})");
        }
        // The same typical hook with an instruction-count hook armed, as a budget needs.
        let start = std::cell::Cell::new(Instant::now());
        lua.set_hook(HookTriggers::new().every_nth_instruction(1000), move |_, _| Ok(VmState::Continue)).unwrap();
        let f: mlua::Function = g.get("check").unwrap();
        let t = Instant::now();
        for i in 0..CALLS {
            call(&lua, &f, &ctxs[i as usize % ctxs.len()]);
        }
        println!("lua54  check+hook {:4.0} ns/call", t.elapsed().as_nanos() as f64 / CALLS as f64);
        lua.remove_hook();
        let began = Instant::now();
        start.set(began);
        lua.set_hook(HookTriggers::new().every_nth_instruction(1000), move |_, _| {
            if began.elapsed() > BUDGET { Err(mlua::Error::runtime("budget")) } else { Ok(VmState::Continue) }
        })
        .unwrap();
        let f: mlua::Function = g.get("forever").unwrap();
        let err = call_err(&lua, &f, &ctxs[0]);
        println!(
            "lua54  forever stopped after {:.2} ms (budget {} ms): {err}",
            began.elapsed().as_secs_f64() * 1e3,
            BUDGET.as_millis()
        );
        println!("lua54  state with the script: {} KiB allocated", bytes / 1024);
    }

    fn call_err(lua: &Lua, f: &mlua::Function, c: &Ctx) -> String {
        let t = lua.create_table().unwrap();
        t.set("sender", c.sender.as_str()).unwrap();
        match f.call::<Value>(t) {
            Ok(_) => "returned".into(),
            Err(e) => e.to_string().lines().next().unwrap_or_default().to_string(),
        }
    }
}

mod rhai_engine {
    use super::*;
    use rhai::{AST, CallFnOptions, Dynamic, Engine, Map, Scope};

    pub fn source() -> String {
        let list: Vec<String> = blocked().iter().map(|d| format!("\"{d}\": true")).collect();
        format!(
            r#"
let REFUSED = #{{ {} }};
fn noop(ctx) {{ }}
fn check(ctx) {{
  let at = ctx.sender.index_of('@');
  if at >= 0 {{
    let domain = ctx.sender.sub_string(at + 1).to_lower();
    if this.contains(domain) {{
      return #{{ action: "reject", code: 550, text: "5.7.1 sender domain refused" }};
    }}
  }}
  if ctx.recipient.starts_with("abuse@") {{ return (); }}
  if ctx.recipients > 50 {{ return #{{ action: "tempfail", text: "too many" }}; }}
  ()
}}
fn forever(ctx) {{ let n = 0; loop {{ n += 1; }} }}
"#,
            list.join(", ")
        )
    }

    fn call(
        engine: &Engine,
        scope: &mut Scope,
        this: &mut Dynamic,
        ast: &AST,
        name: &str,
        c: &Ctx,
    ) -> Result<bool, String> {
        let mut m = Map::new();
        m.insert("client_ip".into(), c.client_ip.into());
        m.insert("helo".into(), c.helo.into());
        m.insert("sender".into(), c.sender.clone().into());
        m.insert("recipient".into(), c.recipient.clone().into());
        m.insert("recipients".into(), Dynamic::from_int(c.recipients as i64));
        // The top level ran once at load; a call runs only the function.
        let opts = CallFnOptions::new().eval_ast(false).rewind_scope(true).bind_this_ptr(this);
        let r: Dynamic = engine.call_fn_with_options(opts, scope, ast, name, (m,)).map_err(|e| e.to_string())?;
        Ok(r.try_cast::<Map>().is_some_and(|m| m.get("action").is_some_and(|a| a.to_string() == "reject")))
    }

    pub fn run() {
        let before = ALLOCATED.load(Ordering::Relaxed);
        let mut engine = Engine::new();
        engine.set_max_expr_depths(64, 32);
        let ast = engine.compile(source()).expect("script");
        let mut scope = Scope::new();
        // Runs the top level once so the constant exists for the functions.
        engine.run_ast_with_scope(&mut scope, &ast).unwrap();
        // Rhai functions see no globals: the table of refused domains is bound as `this`.
        let mut this = scope.get_value::<Map>("REFUSED").map(Dynamic::from_map).unwrap_or_default();
        let bytes = ALLOCATED.load(Ordering::Relaxed) - before;
        let ctxs = contexts();
        for name in ["noop", "check"] {
            let mut refused = 0;
            for c in &ctxs {
                call(&engine, &mut scope, &mut this, &ast, name, c).unwrap();
            }
            let t = Instant::now();
            for i in 0..CALLS {
                refused +=
                    call(&engine, &mut scope, &mut this, &ast, name, &ctxs[i as usize % ctxs.len()]).unwrap() as u32;
            }
            let ns = t.elapsed().as_nanos() as f64 / CALLS as f64;
            println!("rhai   {name:<6} {ns:8.0} ns/call  (refused {refused})");
        }
        engine.on_progress(|_| None);
        let t = Instant::now();
        for i in 0..CALLS {
            call(&engine, &mut scope, &mut this, &ast, "check", &ctxs[i as usize % ctxs.len()]).unwrap();
        }
        println!("rhai   check+hook {:4.0} ns/call", t.elapsed().as_nanos() as f64 / CALLS as f64);
        let began = Instant::now();
        engine.on_progress(
            move |ops| {
                if ops % 1000 == 0 && began.elapsed() > BUDGET { Some("budget".into()) } else { None }
            },
        );
        let err = call(&engine, &mut scope, &mut this, &ast, "forever", &ctxs[0]).err().unwrap_or_default();
        println!(
            "rhai   forever stopped after {:.2} ms (budget {} ms): {}",
            began.elapsed().as_secs_f64() * 1e3,
            BUDGET.as_millis(),
            err.lines().next().unwrap_or_default()
        );
        println!("rhai   engine + compiled script: {} KiB allocated", bytes / 1024);
    }
}

fn main() {
    let rounds: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    for r in 0..rounds {
        println!("# round {}", r + 1);
        lua::run();
        rhai_engine::run();
    }
}
