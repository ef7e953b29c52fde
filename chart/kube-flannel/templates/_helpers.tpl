{{/*
A number for net-conf.json. Helm reads numbers from values files as floats and prints large ones
in exponent form (a VNI of 1000000 would become 1e+06, which flanneld rejects), so whole numbers
are printed as integers; anything else is printed as given.
*/}}
{{- define "flannel.jsonNumber" -}}
{{- if and (kindIs "float64" .) (eq . (float64 (int64 .))) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/*
A JSON string for net-conf.json. A value that already is a JSON string literal (starting with a
double quote, the way some values files work around charts that do not quote) is kept as is.
*/}}
{{- define "flannel.jsonString" -}}
{{- $s := toString . -}}
{{- if hasPrefix "\"" $s -}}
{{- $s -}}
{{- else -}}
{{- $s | quote -}}
{{- end -}}
{{- end -}}

{{/* image: repository:tag, the tag defaulting to the chart's appVersion (the flannel-rs release). */}}
{{- define "flannel.image" -}}
{{- .image.repository }}:{{ .image.tag | default .appVersion -}}
{{- end -}}
