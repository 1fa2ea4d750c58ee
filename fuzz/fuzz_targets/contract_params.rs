//! Parameter reading by every style on arbitrary query strings, headers and path segments: no
//! panic, bounded output.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_contract::json::JsonLimits;
use portcullis_contract::model::{In, ParamDef, ScalarType, Shape, Style};
use portcullis_contract::params::{RawRequest, read, unknown_query};

fn def(name: &str, location: In, style: Style, explode: bool, shape: Shape) -> ParamDef {
    ParamDef {
        name: name.into(),
        location,
        required: false,
        style,
        explode,
        allow_empty_value: false,
        shape,
        schema: None,
        pointer: String::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (query, rest) = text.split_once('#').unwrap_or((&text, ""));
    let ints = || Shape::Array(vec![ScalarType::Integer, ScalarType::String]);
    let obj = || {
        Shape::Object(vec![
            ("a".into(), vec![ScalarType::Integer]),
            ("b".into(), vec![ScalarType::Boolean]),
        ])
    };
    let defs = vec![
        def("q", In::Query, Style::Form, true, ints()),
        def("r", In::Query, Style::Form, false, ints()),
        def("s", In::Query, Style::SpaceDelimited, false, ints()),
        def("t", In::Query, Style::PipeDelimited, false, ints()),
        def("f", In::Query, Style::DeepObject, true, obj()),
        def("o", In::Query, Style::Form, true, obj()),
        def("j", In::Query, Style::Form, true, Shape::Json),
        def("n", In::Query, Style::Form, true, Shape::Scalar(vec![ScalarType::Number, ScalarType::Null])),
        def("p", In::Path, Style::Simple, false, ints()),
        def("l", In::Path, Style::Label, true, obj()),
        def("m", In::Path, Style::Matrix, false, ints()),
        def("x-h", In::Header, Style::Simple, true, obj()),
        def("c", In::Cookie, Style::Form, false, ints()),
    ];
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(rest) {
        headers.insert("x-h", v.clone());
        headers.insert("cookie", v);
    }
    let path_param = |_: &str| -> Option<&str> { Some(rest) };
    let req = RawRequest {
        query: Some(query),
        headers: &headers,
        path_params: &path_param,
    };
    let mut values = Vec::new();
    let mut violations = Vec::new();
    read(&defs, &req, &JsonLimits::default(), &mut values, &mut violations);
    assert!(values.len() <= defs.len());
    assert!(unknown_query(&defs, Some(query)).len() <= 20);
});
