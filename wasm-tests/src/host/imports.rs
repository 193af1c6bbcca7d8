//! The `env` imports of proxy-wasm ABI 0.2.1, implemented the way Envoy does
//! where the filter could notice a difference (status codes, header
//! semantics, empty values returned as a null pointer).

use std::collections::HashSet;

use wasmtime::{Caller, ExternType, Linker, Module, Val, ValType};

use super::abi::{self, status, LogLevel};
use super::state::{headers, ForeignCall, HostState, LocalReply, Metric, MetricKind};

type Ctx<'a> = Caller<'a, HostState>;

/// Why a host function stops early: a status for the guest, or a trap.
enum Stop {
    Status(u32),
    Trap(wasmtime::Error),
}

impl From<wasmtime::Error> for Stop {
    fn from(error: wasmtime::Error) -> Self {
        Stop::Trap(error)
    }
}

type HostResult = Result<u32, Stop>;

/// Foreign functions Envoy offers that a filter may call; they answer Ok.
const KNOWN_FOREIGN_FUNCTIONS: &[&str] = &["clear_route_cache"];

/// Count the call, run it, and turn an early status into the return value.
fn run(
    caller: &mut Ctx<'_>,
    name: &str,
    body: impl FnOnce(&mut Ctx<'_>) -> HostResult,
) -> wasmtime::Result<u32> {
    caller.data_mut().count(name);
    if caller.data().trace_fuel {
        eprintln!("fuel-trace {name} {}", caller.get_fuel().unwrap_or(0));
    }
    match body(caller) {
        Ok(code) | Err(Stop::Status(code)) => Ok(code),
        Err(Stop::Trap(error)) => Err(error),
    }
}

/// Like `run` for imports this host does not model: recorded apart so tests
/// can assert the filter never needed them.
fn unimplemented(caller: &mut Ctx<'_>, name: &str, code: u32) -> wasmtime::Result<u32> {
    caller.data_mut().count_unimplemented(name);
    Ok(code)
}

// ---- guest memory -------------------------------------------------------

fn read(caller: &mut Ctx<'_>, ptr: u32, len: u32) -> Result<Vec<u8>, Stop> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let memory = caller
        .data()
        .memory
        .ok_or(Stop::Status(status::INTERNAL_FAILURE))?;
    let start = ptr as usize;
    let end = start
        .checked_add(len as usize)
        .ok_or(Stop::Status(status::INVALID_MEMORY_ACCESS))?;
    memory
        .data(&*caller)
        .get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or(Stop::Status(status::INVALID_MEMORY_ACCESS))
}

fn write(caller: &mut Ctx<'_>, ptr: u32, bytes: &[u8]) -> Result<(), Stop> {
    let memory = caller
        .data()
        .memory
        .ok_or(Stop::Status(status::INTERNAL_FAILURE))?;
    let start = ptr as usize;
    let end = start
        .checked_add(bytes.len())
        .ok_or(Stop::Status(status::INVALID_MEMORY_ACCESS))?;
    let target = memory
        .data_mut(&mut *caller)
        .get_mut(start..end)
        .ok_or(Stop::Status(status::INVALID_MEMORY_ACCESS))?;
    target.copy_from_slice(bytes);
    Ok(())
}

fn write_u32(caller: &mut Ctx<'_>, ptr: u32, value: u32) -> Result<(), Stop> {
    write(caller, ptr, &value.to_le_bytes())
}

fn write_u64(caller: &mut Ctx<'_>, ptr: u32, value: u64) -> Result<(), Stop> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hand bytes to the guest: allocate with `proxy_on_memory_allocate`, copy,
/// and store pointer and size. Empty data is returned as a null pointer with
/// size 0, as Envoy does.
fn copy_out(caller: &mut Ctx<'_>, bytes: &[u8], ptr_ptr: u32, size_ptr: u32) -> HostResult {
    if bytes.is_empty() {
        write_u32(caller, ptr_ptr, 0)?;
        write_u32(caller, size_ptr, 0)?;
        return Ok(status::OK);
    }
    let allocate = caller
        .data()
        .allocate
        .clone()
        .ok_or(Stop::Status(status::INTERNAL_FAILURE))?;
    let size = abi::len_u32(bytes.len());
    let address = allocate.call(&mut *caller, size)?;
    if address == 0 {
        return Err(Stop::Status(status::INTERNAL_FAILURE));
    }
    write(caller, address, bytes)?;
    write_u32(caller, ptr_ptr, address)?;
    write_u32(caller, size_ptr, size)?;
    Ok(status::OK)
}

// ---- the imports --------------------------------------------------------

/// Define every import the module needs. Known proxy-wasm functions get real
/// implementations; any other import gets a stub that records the call and
/// answers Unimplemented, so the module always instantiates. Returns the
/// names of the stubbed imports.
pub(crate) fn link(
    linker: &mut Linker<HostState>,
    module: &Module,
) -> wasmtime::Result<Vec<String>> {
    wasmtime_wasi::p1::add_to_linker_sync(linker, |state: &mut HostState| &mut state.wasi)?;
    let mut defined = HashSet::new();
    let mut stubbed = Vec::new();
    link_proxy_wasm(linker, &mut defined)?;
    for import in module.imports() {
        let (module_name, name) = (import.module(), import.name());
        if module_name == "wasi_snapshot_preview1"
            || defined.contains(&(module_name.to_string(), name.to_string()))
        {
            continue;
        }
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        let label = format!("{module_name}.{name}");
        let label = if module_name == "env" {
            name.to_string()
        } else {
            label
        };
        stubbed.push(label.clone());
        linker.func_new(
            module_name,
            name,
            ty.clone(),
            move |mut caller, _params, results| {
                caller.data_mut().count_unimplemented(&label);
                for (slot, ty) in results.iter_mut().zip(ty.results()) {
                    *slot = match ty {
                        ValType::I32 => Val::I32(status::UNIMPLEMENTED as i32),
                        ValType::I64 => Val::I64(0),
                        ValType::F32 => Val::F32(0),
                        ValType::F64 => Val::F64(0),
                        _ => Val::null_func_ref(),
                    };
                }
                Ok(())
            },
        )?;
    }
    Ok(stubbed)
}

macro_rules! define {
    ($linker:ident, $defined:ident, $name:literal, |$caller:ident $(, $arg:ident : $ty:ty)*| $body:expr) => {{
        $defined.insert(("env".to_string(), $name.to_string()));
        $linker.func_wrap("env", $name, |mut caller: Caller<'_, HostState>, $($arg: $ty),*| {
            run(&mut caller, $name, |$caller| $body)
        })?;
    }};
}

macro_rules! define_unimplemented {
    ($linker:ident, $defined:ident, $name:literal, $code:expr, ($($ty:ty),*)) => {{
        $defined.insert(("env".to_string(), $name.to_string()));
        $linker.func_wrap("env", $name, |mut caller: Caller<'_, HostState>, $(_: $ty),*| {
            unimplemented(&mut caller, $name, $code)
        })?;
    }};
}

mod callouts;

fn link_proxy_wasm(
    linker: &mut Linker<HostState>,
    defined: &mut HashSet<(String, String)>,
) -> wasmtime::Result<()> {
    // Logging, time, ticks.
    define!(
        linker,
        defined,
        "proxy_log",
        |c, level: u32, ptr: u32, len: u32| log(c, level, ptr, len)
    );
    define!(linker, defined, "proxy_get_log_level", |c, ret: u32| {
        let level = c.data().log_level as u32;
        write_u32(c, ret, level)?;
        Ok(status::OK)
    });
    define!(
        linker,
        defined,
        "proxy_get_current_time_nanoseconds",
        |c, ret: u32| {
            if c.data().clock_fails {
                return Ok(status::INTERNAL_FAILURE);
            }
            let now = c.data().clock.now_nanos();
            write_u64(c, ret, now)?;
            Ok(status::OK)
        }
    );
    define!(
        linker,
        defined,
        "proxy_set_tick_period_milliseconds",
        |c, period: u32| {
            c.data_mut().tick_period_ms = period;
            Ok(status::OK)
        }
    );

    // Buffers.
    define!(
        linker,
        defined,
        "proxy_get_buffer_bytes",
        |c, kind: u32, start: u32, max: u32, ret_ptr: u32, ret_size: u32| {
            get_buffer_bytes(c, kind, start, max, ret_ptr, ret_size)
        }
    );
    define!(
        linker,
        defined,
        "proxy_set_buffer_bytes",
        |c, kind: u32, start: u32, size: u32, ptr: u32, len: u32| {
            set_buffer_bytes(c, kind, start, size, ptr, len)
        }
    );

    // Header maps.
    define!(
        linker,
        defined,
        "proxy_get_header_map_pairs",
        |c, map: u32, ret_ptr: u32, ret_size: u32| {
            let serialized = match c.data_mut().map_slot(map) {
                None => return Err(Stop::Status(status::BAD_ARGUMENT)),
                Some(None) => abi::serialize_pairs(&[]),
                Some(Some(pairs)) => abi::serialize_pairs(pairs),
            };
            copy_out(c, &serialized, ret_ptr, ret_size)
        }
    );
    define!(
        linker,
        defined,
        "proxy_set_header_map_pairs",
        |c, map: u32, ptr: u32, len: u32| {
            let bytes = read(c, ptr, len)?;
            let pairs = abi::deserialize_pairs(&bytes)
                .ok_or(Stop::Status(status::SERIALIZATION_FAILURE))?;
            let target = existing_map(c, map)?;
            headers::replace_all(target, pairs);
            Ok(status::OK)
        }
    );
    define!(
        linker,
        defined,
        "proxy_get_header_map_value",
        |c, map: u32, key_ptr: u32, key_len: u32, ret_ptr: u32, ret_size: u32| {
            let key = read(c, key_ptr, key_len)?;
            let value = match c.data_mut().map_slot(map) {
                None => return Err(Stop::Status(status::BAD_ARGUMENT)),
                Some(None) => None,
                Some(Some(pairs)) => headers::get(pairs, &key).map(<[u8]>::to_vec),
            };
            let value = value.ok_or(Stop::Status(status::NOT_FOUND))?;
            copy_out(c, &value, ret_ptr, ret_size)
        }
    );
    define!(
        linker,
        defined,
        "proxy_replace_header_map_value",
        |c, map: u32, key_ptr: u32, key_len: u32, value_ptr: u32, value_len: u32| {
            let key = read(c, key_ptr, key_len)?;
            let value = read(c, value_ptr, value_len)?;
            headers::replace(existing_map(c, map)?, &key, &value);
            Ok(status::OK)
        }
    );
    define!(
        linker,
        defined,
        "proxy_add_header_map_value",
        |c, map: u32, key_ptr: u32, key_len: u32, value_ptr: u32, value_len: u32| {
            let key = read(c, key_ptr, key_len)?;
            let value = read(c, value_ptr, value_len)?;
            headers::add(existing_map(c, map)?, &key, &value);
            Ok(status::OK)
        }
    );
    define!(
        linker,
        defined,
        "proxy_remove_header_map_value",
        |c, map: u32, key_ptr: u32, key_len: u32| {
            let key = read(c, key_ptr, key_len)?;
            headers::remove(existing_map(c, map)?, &key);
            Ok(status::OK)
        }
    );

    // Properties.
    define!(
        linker,
        defined,
        "proxy_get_property",
        |c, path_ptr: u32, path_len: u32, ret_ptr: u32, ret_size: u32| {
            let path = abi::split_property_path(&read(c, path_ptr, path_len)?);
            let value = c
                .data()
                .properties
                .get(&path)
                .cloned()
                .ok_or(Stop::Status(status::NOT_FOUND))?;
            copy_out(c, &value, ret_ptr, ret_size)
        }
    );
    define!(
        linker,
        defined,
        "proxy_set_property",
        |c, path_ptr: u32, path_len: u32, value_ptr: u32, value_len: u32| {
            let path = abi::split_property_path(&read(c, path_ptr, path_len)?);
            let value = read(c, value_ptr, value_len)?;
            c.data_mut().properties.insert(path, value);
            Ok(status::OK)
        }
    );

    // Stream control and local replies.
    define!(linker, defined, "proxy_continue_stream", |c, kind: u32| {
        let stream = c
            .data_mut()
            .stream()
            .ok_or(Stop::Status(status::BAD_ARGUMENT))?;
        if kind == abi::stream_type::HTTP_REQUEST || kind == abi::stream_type::HTTP_RESPONSE {
            stream.continued += 1;
            Ok(status::OK)
        } else {
            Err(Stop::Status(status::BAD_ARGUMENT))
        }
    });
    define!(linker, defined, "proxy_close_stream", |c, kind: u32| {
        if kind != abi::stream_type::HTTP_REQUEST && kind != abi::stream_type::HTTP_RESPONSE {
            return Err(Stop::Status(status::BAD_ARGUMENT));
        }
        let state = c.data_mut();
        // Envoy answers Ok on a context without an HTTP stream (the root context) and does
        // nothing; on a stream it resets it once the current callback has returned.
        if state.effective_context == state.root_context_id {
            return Ok(status::OK);
        }
        let stream = state.stream().ok_or(Stop::Status(status::BAD_ARGUMENT))?;
        stream.reset = true;
        Ok(status::OK)
    });
    define!(
        linker,
        defined,
        "proxy_send_local_response",
        |c,
         code: u32,
         details_ptr: u32,
         details_len: u32,
         body_ptr: u32,
         body_len: u32,
         headers_ptr: u32,
         headers_len: u32,
         grpc_status: i32| {
            let details = String::from_utf8_lossy(&read(c, details_ptr, details_len)?).into_owned();
            let body = read(c, body_ptr, body_len)?;
            let raw_headers = read(c, headers_ptr, headers_len)?;
            let pairs = abi::deserialize_pairs(&raw_headers)
                .ok_or(Stop::Status(status::SERIALIZATION_FAILURE))?;
            let stream = c
                .data_mut()
                .stream()
                .ok_or(Stop::Status(status::BAD_ARGUMENT))?;
            stream.local_reply_count += 1;
            if stream.local_reply.is_none() {
                stream.local_reply = Some(LocalReply {
                    status: code,
                    details,
                    body,
                    headers: headers::to_strings(&pairs),
                    grpc_status,
                });
            }
            Ok(status::OK)
        }
    );

    // Shared data and queues (per VM).
    define!(
        linker,
        defined,
        "proxy_get_shared_data",
        |c, key_ptr: u32, key_len: u32, ret_ptr: u32, ret_size: u32, ret_cas: u32| {
            let key = read(c, key_ptr, key_len)?;
            let (value, cas) = c
                .data()
                .shared_data
                .get(&key)
                .cloned()
                .ok_or(Stop::Status(status::NOT_FOUND))?;
            copy_out(c, &value, ret_ptr, ret_size)?;
            write_u32(c, ret_cas, cas)?;
            Ok(status::OK)
        }
    );
    define!(
        linker,
        defined,
        "proxy_set_shared_data",
        |c, key_ptr: u32, key_len: u32, value_ptr: u32, value_len: u32, cas: u32| {
            let key = read(c, key_ptr, key_len)?;
            let value = read(c, value_ptr, value_len)?;
            let state = c.data_mut();
            if let Some((_, current)) = state.shared_data.get(&key) {
                if cas != 0 && cas != *current {
                    return Err(Stop::Status(status::CAS_MISMATCH));
                }
            }
            let next = state.next_cas;
            state.next_cas = state.next_cas.wrapping_add(1).max(1);
            state.shared_data.insert(key, (value, next));
            Ok(status::OK)
        }
    );
    define!(
        linker,
        defined,
        "proxy_register_shared_queue",
        |c, name_ptr: u32, name_len: u32, ret_id: u32| {
            let name = String::from_utf8_lossy(&read(c, name_ptr, name_len)?).into_owned();
            let queues = &mut c.data_mut().queues;
            let index = match queues.iter().position(|(n, _)| *n == name) {
                Some(index) => index,
                None => {
                    queues.push((name, Vec::new()));
                    queues.len() - 1
                }
            };
            write_u32(c, ret_id, abi::len_u32(index + 1))?;
            Ok(status::OK)
        }
    );
    define!(
        linker,
        defined,
        "proxy_resolve_shared_queue",
        |c, _vm_ptr: u32, _vm_len: u32, name_ptr: u32, name_len: u32, ret_id: u32| {
            let name = String::from_utf8_lossy(&read(c, name_ptr, name_len)?).into_owned();
            let index = c
                .data()
                .queues
                .iter()
                .position(|(n, _)| *n == name)
                .ok_or(Stop::Status(status::NOT_FOUND))?;
            write_u32(c, ret_id, abi::len_u32(index + 1))?;
            Ok(status::OK)
        }
    );
    define!(
        linker,
        defined,
        "proxy_enqueue_shared_queue",
        |c, id: u32, value_ptr: u32, value_len: u32| {
            let value = read(c, value_ptr, value_len)?;
            let queue = queue_mut(c, id)?;
            queue.push(value);
            Ok(status::OK)
        }
    );
    define!(
        linker,
        defined,
        "proxy_dequeue_shared_queue",
        |c, id: u32, ret_ptr: u32, ret_size: u32| {
            let queue = queue_mut(c, id)?;
            if queue.is_empty() {
                return Err(Stop::Status(status::EMPTY));
            }
            let value = queue.remove(0);
            copy_out(c, &value, ret_ptr, ret_size)
        }
    );

    // Contexts, foreign functions.
    define!(
        linker,
        defined,
        "proxy_set_effective_context",
        |c, context_id: u32| {
            let state = c.data_mut();
            if context_id != state.root_context_id && !state.streams.contains_key(&context_id) {
                return Err(Stop::Status(status::BAD_ARGUMENT));
            }
            state.effective_context = context_id;
            Ok(status::OK)
        }
    );
    define!(linker, defined, "proxy_done", |c| {
        c.data_mut().done_calls += 1;
        Ok(status::OK)
    });
    define!(
        linker,
        defined,
        "proxy_call_foreign_function",
        |c,
         name_ptr: u32,
         name_len: u32,
         args_ptr: u32,
         args_len: u32,
         _ret_ptr: u32,
         _ret_size: u32| {
            let name = String::from_utf8_lossy(&read(c, name_ptr, name_len)?).into_owned();
            let arguments = read(c, args_ptr, args_len)?;
            let state = c.data_mut();
            let known = KNOWN_FOREIGN_FUNCTIONS.contains(&name.as_str());
            state.foreign_calls.push(ForeignCall {
                context_id: state.effective_context,
                name,
                arguments,
            });
            // Known functions return nothing; the result pointer stays null.
            Ok(if known { status::OK } else { status::NOT_FOUND })
        }
    );

    // Metrics.
    define!(
        linker,
        defined,
        "proxy_define_metric",
        |c, kind: u32, name_ptr: u32, name_len: u32, ret_id: u32| {
            let kind = match kind {
                abi::metric_type::COUNTER => MetricKind::Counter,
                abi::metric_type::GAUGE => MetricKind::Gauge,
                abi::metric_type::HISTOGRAM => MetricKind::Histogram,
                _ => return Err(Stop::Status(status::BAD_ARGUMENT)),
            };
            let name = String::from_utf8_lossy(&read(c, name_ptr, name_len)?).into_owned();
            let metrics = &mut c.data_mut().metrics;
            let index = match metrics
                .iter()
                .position(|m| m.name == name && m.kind == kind)
            {
                Some(index) => index,
                None => {
                    metrics.push(Metric {
                        name,
                        kind,
                        value: 0,
                        samples: Vec::new(),
                    });
                    metrics.len() - 1
                }
            };
            write_u32(c, ret_id, abi::len_u32(index + 1))?;
            Ok(status::OK)
        }
    );
    define!(
        linker,
        defined,
        "proxy_increment_metric",
        |c, id: u32, offset: i64| {
            let metric = c
                .data_mut()
                .metric_mut(id)
                .ok_or(Stop::Status(status::NOT_FOUND))?;
            match metric.kind {
                MetricKind::Counter if offset < 0 => Err(Stop::Status(status::BAD_ARGUMENT)),
                MetricKind::Histogram => Err(Stop::Status(status::BAD_ARGUMENT)),
                _ => {
                    metric.value = metric.value.saturating_add(offset);
                    Ok(status::OK)
                }
            }
        }
    );
    define!(
        linker,
        defined,
        "proxy_record_metric",
        |c, id: u32, value: u64| {
            let metric = c
                .data_mut()
                .metric_mut(id)
                .ok_or(Stop::Status(status::NOT_FOUND))?;
            let signed = i64::try_from(value).unwrap_or(i64::MAX);
            match metric.kind {
                // A counter only moves forward.
                MetricKind::Counter => metric.value = metric.value.max(signed),
                MetricKind::Gauge => metric.value = signed,
                MetricKind::Histogram => metric.samples.push(value),
            }
            Ok(status::OK)
        }
    );
    define!(
        linker,
        defined,
        "proxy_get_metric",
        |c, id: u32, ret: u32| {
            let metric = c
                .data_mut()
                .metric_mut(id)
                .ok_or(Stop::Status(status::NOT_FOUND))?;
            if metric.kind == MetricKind::Histogram {
                return Err(Stop::Status(status::BAD_ARGUMENT));
            }
            let value = u64::try_from(metric.value).unwrap_or(0);
            write_u64(c, ret, value)?;
            Ok(status::OK)
        }
    );

    callouts::link(linker, defined)?;
    Ok(())
}

fn log(c: &mut Ctx<'_>, level: u32, ptr: u32, len: u32) -> HostResult {
    let level = LogLevel::from_raw(level).ok_or(Stop::Status(status::BAD_ARGUMENT))?;
    let message = String::from_utf8_lossy(&read(c, ptr, len)?).into_owned();
    let state = c.data_mut();
    if state.echo_logs {
        eprintln!("[wasm {level:?}] {message}");
    }
    state.logs.push((level, message));
    Ok(status::OK)
}

fn get_buffer_bytes(
    c: &mut Ctx<'_>,
    kind: u32,
    start: u32,
    max: u32,
    ret_ptr: u32,
    ret_size: u32,
) -> HostResult {
    let state = c.data_mut();
    let buffer = match kind {
        abi::buffer_type::VM_CONFIGURATION => Some(state.vm_configuration.clone()),
        abi::buffer_type::PLUGIN_CONFIGURATION => Some(state.plugin_configuration.clone()),
        abi::buffer_type::HTTP_REQUEST_BODY => state.stream().and_then(|s| s.request_body.clone()),
        abi::buffer_type::HTTP_RESPONSE_BODY => {
            state.stream().and_then(|s| s.response_body.clone())
        }
        abi::buffer_type::HTTP_CALL_RESPONSE_BODY => state.http_call_response_body.clone(),
        _ => None,
    };
    let buffer = buffer.ok_or(Stop::Status(status::NOT_FOUND))?;
    let start = (start as usize).min(buffer.len());
    let end = start.saturating_add(max as usize).min(buffer.len());
    if start == end {
        // Envoy answers Ok without touching the return slots.
        return Ok(status::OK);
    }
    copy_out(c, &buffer[start..end], ret_ptr, ret_size)
}

fn set_buffer_bytes(
    c: &mut Ctx<'_>,
    kind: u32,
    start: u32,
    size: u32,
    ptr: u32,
    len: u32,
) -> HostResult {
    let data = read(c, ptr, len)?;
    let stream = c
        .data_mut()
        .stream()
        .ok_or(Stop::Status(status::BAD_ARGUMENT))?;
    let buffer = match kind {
        abi::buffer_type::HTTP_REQUEST_BODY => &mut stream.request_body,
        abi::buffer_type::HTTP_RESPONSE_BODY => &mut stream.response_body,
        _ => return Err(Stop::Status(status::BAD_ARGUMENT)),
    };
    let buffer = buffer.as_mut().ok_or(Stop::Status(status::NOT_FOUND))?;
    // Envoy: start 0 drains `size` bytes and prepends; past the end appends.
    if start == 0 {
        let drained = (size as usize).min(buffer.len());
        buffer.drain(..drained);
        buffer.splice(0..0, data);
    } else if start as usize >= buffer.len() {
        buffer.extend_from_slice(&data);
    } else {
        return Err(Stop::Status(status::BAD_ARGUMENT));
    }
    Ok(status::OK)
}

fn existing_map<'a>(c: &'a mut Ctx<'_>, map: u32) -> Result<&'a mut abi::Pairs, Stop> {
    c.data_mut()
        .map_slot(map)
        .and_then(Option::as_mut)
        .ok_or(Stop::Status(status::BAD_ARGUMENT))
}

fn queue_mut<'a>(c: &'a mut Ctx<'_>, id: u32) -> Result<&'a mut Vec<Vec<u8>>, Stop> {
    let index = (id as usize)
        .checked_sub(1)
        .ok_or(Stop::Status(status::NOT_FOUND))?;
    c.data_mut()
        .queues
        .get_mut(index)
        .map(|(_, queue)| queue)
        .ok_or(Stop::Status(status::NOT_FOUND))
}
