//! A proxy-wasm filter that does nothing: the baseline of what Envoy spends on any Wasm filter
//! (a VM call per callback, context bookkeeping), measured by `just bench` as case W. With a
//! number N as its configuration, it instead replaces one request header N times per request
//! (case W-calls): what N host calls cost.

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { calls: Rc::new(Cell::new(0)) })
    });
}}

struct Root {
    calls: Rc<Cell<u32>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let n = self
            .get_plugin_configuration()
            .and_then(|c| String::from_utf8(c).ok())
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(0);
        self.calls.set(n);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop {
            calls: self.calls.get(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop {
    calls: u32,
}

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for _ in 0..self.calls {
            self.set_http_request_header("x-noop", Some("1"));
        }
        Action::Continue
    }
}
