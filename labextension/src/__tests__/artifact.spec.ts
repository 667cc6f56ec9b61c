import { canonicalJSON, notebookArtifact, sha256, sha256Digest } from '../artifact';

const hex = (bytes: Uint8Array): string => Array.from(bytes, b => b.toString(16).padStart(2, '0')).join('');
const utf8 = (text: string): Uint8Array => new TextEncoder().encode(text);

describe('sha256', () => {
  it('matches the FIPS 180-4 test vectors, across block boundaries', () => {
    expect(hex(sha256(utf8('')))).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
    expect(hex(sha256(utf8('abc')))).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(hex(sha256(utf8('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq')))).toBe(
      '248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1'
    );
    expect(hex(sha256(utf8('a'.repeat(1000))))).toBe('41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3');
  });

  it('gives the server digest form', async () => {
    expect(await sha256Digest(utf8('abc'))).toBe('sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });
});

describe('notebookArtifact', () => {
  it('is the notebook blob plus a canonical manifest naming it and its kernel', async () => {
    const content = utf8(JSON.stringify({ cells: [], metadata: { kernelspec: { name: 'python3' } } }));
    const artifact = await notebookArtifact('train.ipynb', content);
    expect(artifact.blobs.size).toBe(2);
    const manifestBytes = artifact.blobs.get(artifact.digest)!;
    expect(await sha256Digest(manifestBytes)).toBe(artifact.digest);
    const manifest = JSON.parse(new TextDecoder().decode(manifestBytes));
    expect(manifest).toEqual({
      version: 1,
      files: { 'train.ipynb': { digest: await sha256Digest(content), size: content.length, mode: 0o644 } },
      environment: { kernel: 'python3' },
      entrypoint: 'train.ipynb'
    });
    expect(artifact.blobs.get(manifest.files['train.ipynb'].digest)).toBe(content);
    // The same notebook makes the same artifact.
    expect((await notebookArtifact('train.ipynb', content)).digest).toBe(artifact.digest);
  });

  it('writes JSON with sorted keys and no spaces', () => {
    expect(canonicalJSON({ b: [1, { d: null, c: 'x' }], a: true })).toBe('{"a":true,"b":[1,{"c":"x","d":null}]}');
  });
});
