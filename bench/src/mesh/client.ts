// One streamed chat completion, timed from the client side: TTFT is from just before the request is
// sent to the first chunk carrying non-empty content, the inter-token latencies are the gaps between
// consecutive content chunks, and the token counts are the server's usage chunk (requested with
// stream_options.include_usage). Any failure (HTTP status, an error event in the stream, a stream
// without usage, a network error) is returned as `error`, never thrown, so a run counts its errors.
import type { ChatMessage } from '@kvmesh/engine';

export interface ChatRequest {
  baseUrl: string;
  model: string;
  messages: readonly ChatMessage[];
  maxTokens: number;
  /** Bounds one request; past it the request is aborted and counted as an error. */
  timeoutMs: number;
}

export interface ChatSample {
  /** Since the first content chunk; undefined when none came. */
  ttftMs?: number;
  interTokenMs: number[];
  /** From sending to the end of the stream. */
  latencyMs: number;
  text: string;
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
  error?: string;
}

interface StreamChunk {
  choices?: { delta?: { content?: string } }[];
  usage?: {
    prompt_tokens?: number;
    completion_tokens?: number;
    prompt_tokens_details?: { cached_tokens?: number } | null;
  } | null;
  error?: { message?: string; code?: string | null };
}

export async function streamChat(request: ChatRequest): Promise<ChatSample> {
  const sample: ChatSample = {
    interTokenMs: [],
    latencyMs: 0,
    text: '',
    promptTokens: 0,
    completionTokens: 0,
    cachedTokens: 0,
  };
  const sentAt = performance.now();
  let lastContentAt: number | undefined;
  let usageSeen = false;
  let done = false;
  const onEvent = (data: string): void => {
    if (data === '[DONE]') {
      done = true;
      return;
    }
    const chunk = JSON.parse(data) as StreamChunk;
    if (chunk.error !== undefined) {
      sample.error ??= `stream error ${chunk.error.code ?? ''}: ${chunk.error.message ?? ''}`;
      return;
    }
    const content = chunk.choices?.[0]?.delta?.content ?? '';
    if (content !== '') {
      const at = performance.now();
      if (lastContentAt === undefined) sample.ttftMs = at - sentAt;
      else sample.interTokenMs.push(at - lastContentAt);
      lastContentAt = at;
      sample.text += content;
    }
    if (chunk.usage != null) {
      usageSeen = true;
      sample.promptTokens = chunk.usage.prompt_tokens ?? 0;
      sample.completionTokens = chunk.usage.completion_tokens ?? 0;
      sample.cachedTokens = chunk.usage.prompt_tokens_details?.cached_tokens ?? 0;
    }
  };
  try {
    const response = await fetch(`${request.baseUrl}/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: request.model,
        messages: request.messages,
        max_tokens: request.maxTokens,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
      }),
      signal: AbortSignal.timeout(request.timeoutMs),
    });
    if (!response.ok || response.body === null) {
      const body = await response.text();
      sample.error = `HTTP ${response.status}: ${body.slice(0, 200)}`;
    } else {
      const decoder = new TextDecoder();
      let buffered = '';
      for await (const bytes of response.body) {
        buffered += decoder.decode(bytes as Uint8Array, { stream: true });
        // Server-sent events are separated by a blank line; each of ours is one `data:` line.
        for (let end = buffered.indexOf('\n\n'); end >= 0; end = buffered.indexOf('\n\n')) {
          const event = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          for (const line of event.split('\n')) if (line.startsWith('data: ')) onEvent(line.slice(6));
        }
      }
      if (sample.error === undefined && !done) sample.error = 'stream ended without [DONE]';
      if (sample.error === undefined && !usageSeen) sample.error = 'stream ended without a usage chunk';
    }
  } catch (err) {
    sample.error = `request failed: ${(err as Error).message}`;
  }
  sample.latencyMs = performance.now() - sentAt;
  return sample;
}
